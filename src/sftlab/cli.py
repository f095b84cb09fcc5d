"""The `sftlab` command line."""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
from pathlib import Path

import typer
from rich.console import Console

from sftlab.errors import SftlabError


def os_error_message(e: OSError) -> str:
    """A user-facing sentence for a failed file operation: what failed, on which path, and what is kept."""
    where = f" ({e.filename})" if e.filename else ""
    if e.errno == errno.ENOSPC:
        return (f"no space left on the device{where}; nothing already written was lost (outputs are written "
                "atomically, curation keeps every finished prompt): free space and re-run the same command")
    return f"{e.strerror or e}{where}"


def guarded(fn):
    """Every command: an error sftlab raised on purpose, or a failed file operation, is one line and exit 2."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SftlabError as e:
            _fail(e)
        except OSError as e:
            _fail(os_error_message(e))

    return run


class GuardedTyper(typer.Typer):
    """A Typer app whose commands all go through `guarded`."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)
        return lambda fn: register(guarded(fn)) and fn


app = GuardedTyper(help="sftlab: supervised fine-tuning end to end.", no_args_is_help=True,
                   pretty_exceptions_enable=False)
data_app = GuardedTyper(help="Inspect and convert datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
curate_app = GuardedTyper(help="Make SFT data: distill from a teacher, best-of-k rejection sampling, filter a pool.",
                          no_args_is_help=True)
app.add_typer(curate_app, name="curate")
console = Console()


def _quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _fail(e: Exception | str) -> None:
    # markup off: error text may contain [brackets]; soft wrap: keep paths and messages on one line
    console.print(f"error: {e}", soft_wrap=True, markup=False, style="red")
    raise typer.Exit(2)


@app.command()
def demo(name: str = typer.Option("Orca", help="Identity name the model should learn."),
         author: str = typer.Option("the sftlab team", help="Who built the model, per its new identity."),
         model: str = typer.Option("gemma-3-270m", help="Student (base) model."),
         out: Path = typer.Option(Path("runs/demo"), help="Output folder."),
         extra_data: list[str] = typer.Option([], "--extra-data", help="More training data (any source; "
                                              "{{name}}/{{author}} are filled in). Repeatable."),
         epochs: float = typer.Option(2.0),
         general_examples: int = typer.Option(None, help="Use the first N shipped general examples (diversity "
                                                         "rank order); default all."),
         method: str = typer.Option("lora", help="lora or full"), seed: int = typer.Option(0),
         judge: str = typer.Option("qwen2.5-coder-1.5b-instruct",
                                   help="Judge for the tuned-vs-base win-rates ('' skips).")
         ) -> None:
    """Base model -> instruct model with a new identity: train, evaluate base vs tuned, write the run report."""
    _quiet()
    from sftlab.demo import run_demo

    try:
        run_demo(name=name, author=author, model=model, out_dir=out, extra_data=extra_data, epochs=epochs,
                 general_examples=general_examples, method=method, judge=judge or None, seed=seed,
                 console=console)
    except SftlabError as e:
        _fail(e)


@app.command("train")
def train_cmd(config: Path = typer.Argument(..., help="YAML config (see recipes/)."),
              resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint."),
              overwrite: bool = typer.Option(False, "--overwrite", help="Delete an earlier run in the run folder "
                                                                        "first (only a folder sftlab created)."),
              set_: list[str] = typer.Option([], "--set", help="Override a key: --set max_steps=10 --set lora.r=8")
              ) -> None:
    """SFT any causal LM (full or LoRA) on any dataset."""
    _quiet()
    from sftlab.train.config import load_config
    from sftlab.train.run import train
    from sftlab.yamlconfig import parse_set_items

    try:
        cfg = load_config(config, parse_set_items(set_))
        train(cfg, resume=resume, overwrite=overwrite, console=console)
    except SftlabError as e:
        _fail(e)


@app.command("eval")
def eval_cmd(model: str = typer.Argument(..., help="Base model (packaged name, folder, .gguf, hub id)."),
             adapter: Path = typer.Option(None, help="LoRA adapter folder (tuned = base + adapter)."),
             tuned: str = typer.Option(None, help="Full tuned model folder (instead of --adapter)."),
             suite: Path = typer.Option(None, help="Evaluation suite YAML (see evals/). Without it: instruction "
                                                   "following on --prompts, plus the options below."),
             prompts: Path = typer.Option(None, help="File with one prompt per line, or JSONL with a prompt field."),
             reference: Path = typer.Option(None, help="Held-out SFT data for response NLL."),
             name: str = typer.Option(None, help="Identity name to check for."),
             author: str = typer.Option(None, help="Identity author to check for."),
             max_new_tokens: int = typer.Option(128),
             no_cache: bool = typer.Option(False, help="Do not reuse cached generations."),
             out: Path = typer.Option(Path("runs/eval"), help="Folder for eval.json/.md.")) -> None:
    """Base vs tuned, side by side on the same prompts and decoding: every evaluator of a suite."""
    _quiet()
    from sftlab.demo import show_result
    from sftlab.evaluate.runner import run_suite, write_result
    from sftlab.evaluate.subjects import load_subjects
    from sftlab.evaluate.suite import DEFAULT_GENERAL_PROMPTS, DEFAULT_IDENTITY_PROMPTS, load_suite, make_suite

    try:
        if (adapter is None) == (tuned is None):
            raise SftlabError("give exactly one of --adapter or --tuned")
        if suite:
            spec = load_suite(suite)
        else:
            texts = DEFAULT_IDENTITY_PROMPTS + DEFAULT_GENERAL_PROMPTS
            if prompts:
                lines = [x for x in prompts.read_text(encoding="utf-8").splitlines() if x.strip()]
                texts = [json.loads(x)["prompt"] if prompts.suffix == ".jsonl" else x.strip() for x in lines]
            evs: list[dict] = [{"type": "instruction_following", "prompts": texts}]
            if reference:
                evs.insert(0, {"type": "nll", "data": {"path": str(reference)}})
            if name:
                evs.append({"type": "identity", "name": name, "author": author})
            spec = make_suite({"name": "eval", "max_new_tokens": max_new_tokens, "evaluators": evs})
        subjects = load_subjects(model, adapter=adapter, tuned=tuned,
                                 cache_path=None if no_cache else out / "generations.sqlite")
        res = run_suite(spec, subjects, log=console.print)
        js, md = write_result(res, out)
        show_result(res, console)
        console.print(f"wrote {md} and {js}")
    except (SftlabError, ValueError) as e:
        _fail(e)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="Run folder (training output, or a folder with train/ and eval/)."),
           out: Path = typer.Option(None, help="Output folder; default RUN_DIR/report."),
           eval_json: Path = typer.Option(None, "--eval", help="eval.json (default RUN_DIR/eval/eval.json)."),
           curation: Path = typer.Option(None, help="Curation report/summary JSON to include.")) -> None:
    """One self-contained HTML page (and Markdown) per run: data, curves, base vs tuned, samples."""
    from sftlab.report.build import write_report

    try:
        page, md = write_report(run_dir, out, eval_json, curation)
        console.print(f"wrote {page} and {md}")
    except SftlabError as e:
        _fail(e)


@data_app.command("check")
def data_check(path: str = typer.Argument(..., help="File, dataset folder or database URL."),
               format: str = typer.Option("auto"), type: str = typer.Option(None),
               query: str = typer.Option(None, help="SQL query (for a database)."),
               on_error: str = typer.Option("skip"),
               model: str = typer.Option(None, help="Also tokenize with this model's template and verify masks."),
               chat_template: str = typer.Option("auto"),
               allow_empty: bool = typer.Option(False, help="An empty source is not an error.")) -> None:
    """Read, validate (and optionally tokenize) a dataset; print counts and every skip reason."""
    _quiet()
    from sftlab.data.loading import load_conversations, make_spec

    try:
        convs, report = load_conversations(make_spec(dict(path=path, format=format, type=type, query=query,
                                                          on_error=on_error, allow_empty=allow_empty), "data check"))
        console.print_json(json.dumps(report.to_dict()))
        if model:
            from sftlab.models.loading import load_tokenizer, resolve_model_path
            from sftlab.templates.chat_templates import ensure_chat_template
            from sftlab.train.dataset import tokenize_all

            tok = load_tokenizer(resolve_model_path(model))
            ensure_chat_template(tok, chat_template)
            _, stats = tokenize_all(tok, convs)
            console.print_json(json.dumps(stats.to_dict()))
    except SftlabError as e:
        _fail(e)


@data_app.command("convert")
def data_convert(src: str = typer.Argument(...), dst: Path = typer.Argument(..., help="Output .jsonl (messages)."),
                 format: str = typer.Option("auto"), on_error: str = typer.Option("raise"),
                 overwrite: bool = typer.Option(False, help="Replace DST if it exists (never the input)."),
                 allow_empty: bool = typer.Option(False, help="Write an empty DST when the source has no (valid) "
                                                              "record, instead of an error.")) -> None:
    """Convert any supported source into sftlab's JSONL `messages` format (atomic write)."""
    from sftlab.data.loading import load_conversations, make_spec, require_records
    from sftlab.data.writers import refuse_to_clobber, write_jsonl

    try:
        refuse_to_clobber(dst, inputs=[src], overwrite=overwrite)
        spec = make_spec(dict(path=src, format=format, on_error=on_error, allow_empty=allow_empty), "data convert")
        convs, report = load_conversations(spec)
        if not allow_empty:
            require_records(report)
        n = write_jsonl(dst, convs)
        skipped = ", ".join(f"{r}: {c}" for r, c in report.skipped.most_common())
        console.print(f"wrote {n} conversations to {dst}; skipped {sum(report.skipped.values())}"
                      + (f" ({skipped})" if skipped else ""), markup=False)
    except SftlabError as e:
        _fail(e)


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
    from sftlab.curate.store import CurationFiles, write_failed
    from sftlab.data.writers import write_json

    summary, path = stats.to_dict(), CurationFiles(out).summary
    try:
        write_json(path, summary)
    except OSError as e:
        raise write_failed(e, path, out, stats.records_in_file) from e
    console.print_json(json.dumps(summary))


def _cache(out: Path, no_cache: bool):
    """The generation cache beside the output; a cache that cannot be opened is a clear error."""
    import sqlite3

    from sftlab.curate.store import CurationFiles, GenerationCache

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
        no_cache: bool = typer.Option(False)) -> None:
    """A teacher answers the prompts; the output is ordinary SFT data."""
    _quiet()
    from sftlab.curate.distill import distill, distill_settings
    from sftlab.curate.runner import check_batch_size, check_sampling, engine_id
    from sftlab.generation.base import SamplingParams
    from sftlab.generation.factory import build_generator

    try:
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, n=n, seed=seed)
        check_sampling(params, "n")
        check_batch_size(batch_size)
        gid = engine_id(teacher, adapter, base_url)
        _claim(out, distill_settings(gid, params, system, keep_unfinished), prompts)
        convs = _prompts(prompts, format, max_prompts)
        gen = build_generator(teacher, adapter=adapter, base_url=base_url, batch_size=batch_size,
                              api_key_env=api_key_env)
        stats = distill(convs, gen, out, params, system_prompt=system, keep_unfinished=keep_unfinished,
                        cache=_cache(out, no_cache), batch_size=batch_size, console=console, generator_id=gid,
                        inputs=[prompts])
        _report(out, stats)
    except (SftlabError, RuntimeError, ValueError) as e:
        _fail(e)


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
        batch_size: int = typer.Option(8), no_cache: bool = typer.Option(False)) -> None:
    """Sample k replies per prompt, score them, keep the best: rejection sampling."""
    _quiet()
    from sftlab.curate.best_of_k import best_of_k, best_of_k_settings
    from sftlab.curate.rewards import JudgeReward, RewardModelScore, resolve_reward
    from sftlab.curate.runner import check_batch_size, check_sampling, engine_id
    from sftlab.generation.base import SamplingParams
    from sftlab.generation.factory import build_generator

    try:
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, n=k, seed=seed)
        check_sampling(params, "k")
        check_batch_size(batch_size)
        gid = engine_id(policy, adapter, base_url)
        reward_id = (f"judge {engine_id(judge, base_url=base_url)}" if reward == "judge" else
                     f"reward_model {engine_id(reward.split(':', 1)[1])}" if reward.startswith("reward_model:")
                     else reward)
        _claim(out, best_of_k_settings(gid, params, reward_id, select, min_score), prompts)
        convs = _prompts(prompts, format, max_prompts)
        if reward == "judge":
            fn = JudgeReward(build_generator(judge, base_url=base_url, api_key_env=api_key_env))
        elif reward.startswith("reward_model:"):
            fn = RewardModelScore(reward.split(":", 1)[1])
        else:
            fn = resolve_reward(reward)
        gen = build_generator(policy, adapter=adapter, base_url=base_url, batch_size=batch_size,
                              api_key_env=api_key_env)
        stats = best_of_k(convs, gen, fn, out, params, reward_name=reward, select=select, min_score=min_score,
                          cache=_cache(out, no_cache), batch_size=batch_size, console=console, generator_id=gid,
                          reward_id=reward_id, inputs=[prompts])
        _report(out, stats)
    except (SftlabError, RuntimeError, ValueError) as e:
        _fail(e)


@curate_app.command("filter")
def curate_filter(
        config: Path = typer.Argument(None, help="Filter config YAML (see recipes/filter_alpaca.yaml)."),
        pool: list[str] = typer.Option([], help="Pool source(s): files, HF datasets, database URLs."),
        out: str = typer.Option(None, help="Selected set (.jsonl)."),
        target_size: int = typer.Option(None, help="How many records to keep."),
        eval_set: list[str] = typer.Option([], "--eval", help="Evaluation set(s) to decontaminate against."),
        scorer: list[str] = typer.Option([], help="Quality scorer TYPE[:MODEL]: ifd, perplexity, judge, "
                                                  "judge_logprob, reward_model:PATH, custom:module:function."),
        diversity: str = typer.Option(None, help="deita | kcenter | kmeans | none"),
        set_: list[str] = typer.Option([], "--set", help="Override a key: --set dedup.threshold=0.7"),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output that sftlab did "
                                                                  "not write (never an input).")) -> None:
    """Filter a large pool to a small, high-quality, diverse set; explain every decision in a report."""
    _quiet()
    from sftlab.curate.filter.pipeline import make_filter_config, run_filter
    from sftlab.curate.store import check_selection_output
    from sftlab.yamlconfig import apply_overrides, parse_set_items, read_yaml_mapping

    try:
        raw: dict = read_yaml_mapping(config, "filter config") if config else {}
        if pool:
            raw["pool"] = pool
        if out:
            raw["output"] = out
        if target_size:
            raw["target_size"] = target_size
        if eval_set:
            raw.setdefault("decontaminate", {})["eval"] = eval_set
        if scorer:
            raw["scorers"] = []
            for sc in scorer:
                kind, _, arg = sc.partition(":")
                key = "function" if kind == "custom" else "model"
                raw["scorers"].append({"type": kind, **({key: arg} if arg else {})})
        if diversity:
            raw.setdefault("diversity", {})["method"] = diversity
        apply_overrides(raw, parse_set_items(set_))
        cfg = make_filter_config(raw, str(config) if config else "options")
        check_selection_output(cfg.output, cfg.report_path, [s.path for s in [*cfg.pool, *cfg.decontaminate.eval]],
                               overwrite)
        result = run_filter(cfg, console=console)
        for step in result.funnel:
            console.print(f"  {step['stage']:<22} {step['in']:>7} -> {step['kept']:>7}  {step['dropped'] or ''}")
    except (SftlabError, ValueError) as e:
        _fail(e)


@app.command()
def serve(model: str = typer.Argument(..., help="Model (packaged name, folder, .gguf, hub id)."),
          adapter: str = typer.Option(None, help="LoRA adapter to apply."),
          host: str = typer.Option("127.0.0.1", help="Bind address (default: this machine only)."),
          port: int = typer.Option(8000, help="Port, 1-65535."),
          name: str = typer.Option(None, help="Model name to report."),
          api_key_env: str = typer.Option(None, help="Require the key held in this environment variable."),
          max_tokens: int = typer.Option(1024, help="Largest max_tokens a request may ask for."),
          max_queue: int = typer.Option(64, help="Requests that may wait for the model; more get 503 + Retry-After."),
          batch_size: int = typer.Option(8, help="Waiting requests with equal sampling parameters generated together.")
          ) -> None:
    """OpenAI-compatible HTTP server (/v1/chat/completions incl. streaming, /v1/models, /health)."""
    _quiet()
    import uvicorn

    from sftlab.generation.factory import load_transformers_generator
    from sftlab.models.loading import resolve_model_path
    from sftlab.serve.server import check_limits, create_app, listen_socket

    try:
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise SftlabError(f"--api-key-env {api_key_env}: that environment variable is not set")
        check_limits(max_tokens, max_queue, batch_size)
        sock = listen_socket(host, port)  # before the model loads: a taken port fails in a second, not a minute
        gen = load_transformers_generator(resolve_model_path(model), adapter=adapter, model_id=name or model,
                                          batch_size=batch_size)
        app_ = create_app(gen, name or model, api_key=key, max_tokens_limit=max_tokens, max_queue=max_queue)
        console.print(f"serving {name or model} on http://{host}:{port}/v1")
        uvicorn.Server(uvicorn.Config(app_, log_level="warning")).run(sockets=[sock])
    except SftlabError as e:
        _fail(e)


@app.command()
def chat(model: str = typer.Argument(..., help="Model (packaged name, folder, .gguf, hub id)."),
         adapter: str = typer.Option(None, help="LoRA adapter to apply."),
         max_new_tokens: int = typer.Option(256), temperature: float = typer.Option(0.0)) -> None:
    """Interactive terminal chat with the saved chat template; /reset, /system TEXT, /exit."""
    _quiet()
    import sys

    from sftlab.generation.factory import load_transformers_generator
    from sftlab.models.loading import resolve_model_path
    from sftlab.serve.chat import chat_loop

    def read(prompt: str) -> str:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        gen = load_transformers_generator(resolve_model_path(model), adapter=adapter, model_id=model)
        chat_loop(gen, read, write, max_new_tokens=max_new_tokens, temperature=temperature)
    except SftlabError as e:
        _fail(e)


@app.command()
def export(adapter: Path = typer.Argument(..., help="LoRA adapter folder (e.g. runs/x/final)."),
           out: Path = typer.Argument(..., help="Where to write the merged model."),
           base: str = typer.Option(None, help="Base model; default: the one the adapter was trained on."),
           overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export in OUT (only a "
                                                                     "folder `sftlab export` created).")) -> None:
    """Merge a LoRA adapter into its base model: a standard HF checkpoint for transformers or vLLM."""
    _quiet()
    from sftlab.models.export import export_merged

    try:
        console.print(f"merged model written to {export_merged(adapter, out, base, overwrite=overwrite)}")
    except SftlabError as e:
        _fail(e)


@app.command()
def models() -> None:
    """List the packaged (offline) models."""
    from sftlab.models.packaged import PACKAGED

    for name, (pkg, desc) in PACKAGED.items():
        console.print(f"[bold]{name}[/]  ({pkg}): {desc}")


if __name__ == "__main__":
    app()
