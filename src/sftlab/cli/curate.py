"""`sftlab curate`: distill, best-of-k and filter."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from sftlab.cli.base import console, curate_app, fail, quiet
from sftlab.errors import SftlabError

VLLM_HELP = ("vLLM engine option KEY=VALUE, repeatable (tensor_parallel_size, data_parallel_size, "
             "gpu_memory_utilization, max_model_len); used when the local engine is vLLM.")


def _prompts(path: str, fmt: str, max_prompts: int | None):
    """The prompts to curate; none at all is an error (a wrong path or format, not a finished job)."""
    from sftlab.data.loading import load_conversations, make_spec
    from sftlab.errors import ConfigError, DataError

    if max_prompts is not None and max_prompts < 1:
        raise ConfigError(f"--max-prompts {max_prompts}: must be at least 1")
    convs, report = load_conversations(make_spec(dict(path=path, format=fmt, on_error="skip", require_response=False,
                                                      max_records=max_prompts), "--prompts"))
    if report.skipped:
        console.print(f"[yellow]skipped {sum(report.skipped.values())} bad prompt records[/]: {dict(report.skipped)}")
    if not convs:
        raise DataError(f"no prompts to curate (read {report.read} records, skipped {dict(report.skipped)}; "
                        f"first problem: {report.examples[0] if report.examples else 'the source is empty'})",
                        source=path)
    return convs


def _claim(out: Path, settings: dict, prompts: str) -> None:
    """Refuse a bad --out (a folder, an input, someone else's file, other settings) before loading a model."""
    from sftlab.curate.runner import check_output

    check_output(out, settings, inputs=[prompts])


def _report(out: Path, stats) -> None:
    """Print the run summary and keep it beside the output."""
    from sftlab.artifacts.records import CurationSummary, write_record
    from sftlab.curate.store import CurationFiles, write_failed

    summary, path = CurationSummary(**stats.to_dict()), CurationFiles(out).summary
    try:
        write_record(path, summary)
    except OSError as e:
        raise write_failed(e, path, out, stats.records_in_file) from e
    console.print_json(json.dumps(summary.to_dict()))


def _sampling(what: str, batch_size: int, **settings):
    """Sampling parameters and batch size, checked before anything is loaded (`what` names the count option)."""
    from sftlab.curate.runner import check_batch_size, check_sampling
    from sftlab.generation.base import SamplingParams

    params = SamplingParams(**settings)
    check_sampling(params, what)
    check_batch_size(batch_size)
    return params


def _cache(out: Path, no_cache: bool):
    """The generation cache beside the output; a cache that cannot be opened is a clear error."""
    import sqlite3

    from sftlab.curate.store import CurationFiles
    from sftlab.generation.cache import GenerationCache

    path = CurationFiles(out).cache
    try:
        return None if no_cache else GenerationCache(path)
    except sqlite3.Error as e:
        raise SftlabError(f"generation cache {path}: {e}; pass --no-cache or choose another --out") from None


@curate_app.command("distill")
def curate_distill(
        prompts: str = typer.Option(..., help="Prompt source (any reader); an existing reply becomes ignored."),
        teacher: str = typer.Option("smollm2-135m-instruct", help="Teacher model, or model name at --base-url."),
        out: Path = typer.Option(..., help="Output JSONL (messages + provenance); re-run to resume."),
        base_url: list[str] = typer.Option([], help="OpenAI-compatible endpoint (vLLM, llama.cpp, sftlab serve...); "
                                                    "repeat for several serving the same model (least-loaded)."),
        api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key."),
        adapter: str = typer.Option(None), format: str = typer.Option("auto"),
        system: str = typer.Option(None, help="System prompt for the teacher."),
        n: int = typer.Option(1, help="Replies per prompt."), max_new_tokens: int = typer.Option(256),
        temperature: float = typer.Option(0.0), top_p: float = typer.Option(1.0), seed: int = typer.Option(0),
        max_prompts: int = typer.Option(None), batch_size: int = typer.Option(8),
        keep_unfinished: bool = typer.Option(False, help="Keep replies that hit max_new_tokens."),
        vllm: list[str] = typer.Option([], "--vllm", help=VLLM_HELP),
        no_cache: bool = typer.Option(False)) -> None:
    """A teacher answers the prompts; the output is ordinary SFT data."""
    quiet()
    from sftlab.curate.distill import distill, distill_settings
    from sftlab.curate.runner import engine_id
    from sftlab.generation.factory import build_generator
    from sftlab.generation.vllm_backend import vllm_options_from_cli

    try:
        engine_options = vllm_options_from_cli(vllm, base_url)
        params = _sampling("n", batch_size, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                           n=n, seed=seed)
        gid = engine_id(teacher, adapter, base_url)
        _claim(out, distill_settings(gid, params, system, keep_unfinished), prompts)
        convs = _prompts(prompts, format, max_prompts)
        gen = build_generator(teacher, adapter=adapter, base_url=base_url, batch_size=batch_size,
                              api_key_env=api_key_env, vllm=engine_options)
        stats = distill(convs, gen, out, params, system_prompt=system, keep_unfinished=keep_unfinished,
                        cache=_cache(out, no_cache), batch_size=batch_size, console=console, generator_id=gid,
                        inputs=[prompts])
        _report(out, stats)
    except (SftlabError, RuntimeError, ValueError) as e:
        fail(e)


@curate_app.command("best-of-k")
def curate_best_of_k(
        prompts: str = typer.Option(..., help="Prompts with reference answers (e.g. gsm8k/train.jsonl)."),
        policy: str = typer.Option("smollm2-135m-instruct", help="Policy model (usually the model to train)."),
        out: Path = typer.Option(..., help="Output JSONL; re-run to resume."),
        reward: str = typer.Option("gsm8k", help="gsm8k|numeric|exact|normalized|json_valid|judge|"
                                                 "reward_model:PATH|module:function"),
        judge: str = typer.Option("smollm2-135m-instruct", help="Judge model for --reward judge."),
        k: int = typer.Option(4), select: str = typer.Option("best", help="best | all"),
        min_score: float = typer.Option(None, help="Keep only samples scoring at least this."),
        base_url: list[str] = typer.Option([], help="OpenAI-compatible endpoint; repeat for several (least-loaded)."),
        api_key_env: str = typer.Option("OPENAI_API_KEY"),
        adapter: str = typer.Option(None), format: str = typer.Option("auto"),
        max_new_tokens: int = typer.Option(256), temperature: float = typer.Option(0.8),
        top_p: float = typer.Option(0.95), seed: int = typer.Option(0), max_prompts: int = typer.Option(None),
        batch_size: int = typer.Option(8), no_cache: bool = typer.Option(False),
        vllm: list[str] = typer.Option([], "--vllm", help=VLLM_HELP)) -> None:
    """Sample k replies per prompt, score them, keep the best: rejection sampling."""
    quiet()
    from sftlab.curate.best_of_k import best_of_k, best_of_k_settings
    from sftlab.curate.rewards import make_reward, reward_identity
    from sftlab.curate.runner import engine_id
    from sftlab.generation.factory import build_generator
    from sftlab.generation.vllm_backend import vllm_options_from_cli

    try:
        engine_options = vllm_options_from_cli(vllm, base_url)
        params = _sampling("k", batch_size, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                           n=k, seed=seed)
        gid = engine_id(policy, adapter, base_url)
        reward_id = reward_identity(reward, judge, base_url)
        _claim(out, best_of_k_settings(gid, params, reward_id, select, min_score), prompts)
        convs = _prompts(prompts, format, max_prompts)
        fn = make_reward(reward, judge=judge, base_url=base_url, api_key_env=api_key_env)
        gen = build_generator(policy, adapter=adapter, base_url=base_url, batch_size=batch_size,
                              api_key_env=api_key_env, vllm=engine_options)
        stats = best_of_k(convs, gen, fn, out, params, reward_name=reward, select=select, min_score=min_score,
                          cache=_cache(out, no_cache), batch_size=batch_size, console=console, generator_id=gid,
                          reward_id=reward_id, inputs=[prompts])
        _report(out, stats)
    except (SftlabError, RuntimeError, ValueError) as e:
        fail(e)


@curate_app.command("filter")
def curate_filter(
        config: Path = typer.Argument(None, help="Filter config YAML (see recipes/filter_alpaca.yaml)."),
        pool: list[str] = typer.Option([], help="Pool source(s): files, HF datasets, database URLs."),
        out: str = typer.Option(None, help="Selected set (.jsonl, .parquet, or a folder with --out-format hf)."),
        out_format: str = typer.Option(None, help="jsonl | parquet | hf (a save_to_disk folder); default: from "
                                                  "--out (.parquet is Parquet, anything else JSONL)."),
        target_size: int = typer.Option(None, help="How many records to keep."),
        eval_set: list[str] = typer.Option([], "--eval", help="Evaluation set(s) to decontaminate against."),
        scorer: list[str] = typer.Option([], help="Quality scorer TYPE[:MODEL]: ifd, perplexity, judge, "
                                                  "judge_logprob, reward_model:PATH, custom:module:function."),
        diversity: str = typer.Option(None, help="deita | kcenter | kmeans | none"),
        set_: list[str] = typer.Option([], "--set", help="Override a key: --set dedup.threshold=0.7"),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output that sftlab did "
                                                                  "not write (never an input).")) -> None:
    """Filter a large pool to a small, high-quality, diverse set; explain every decision in a report."""
    quiet()
    from sftlab.curate.filter.config import filter_config_with_options
    from sftlab.curate.filter.pipeline import run_filter
    from sftlab.curate.outputs import check_selection_output
    from sftlab.yamlconfig import parse_set_items

    try:
        cfg = filter_config_with_options(config, parse_set_items(set_), pool=pool, output=out,
                                         output_format=out_format, target_size=target_size, eval_sets=eval_set,
                                         scorers=scorer, diversity=diversity)
        check_selection_output(cfg.output, cfg.report_path, [s.path for s in [*cfg.pool, *cfg.decontaminate.eval]],
                               overwrite, cfg.output_format)
        result = run_filter(cfg, console=console)
        for step in result.funnel:
            console.print(f"  {step['stage']:<22} {step['in']:>7} -> {step['kept']:>7}  {step['dropped'] or ''}")
    except (SftlabError, ValueError) as e:
        fail(e)
