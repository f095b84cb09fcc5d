"""`sftlab curate`: distill, best-of-k and filter."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from sftlab.cli.base import console, curate_app, fail, quiet
from sftlab.curate.job_help import BEST_OF_K, DISTILL, VLLM_HELP
from sftlab.errors import SftlabError


@curate_app.command("distill")
def curate_distill(
        prompts: str = typer.Option(..., help=DISTILL["prompts"]),
        teacher: str = typer.Option("smollm2-135m-instruct", help=DISTILL["teacher"]),
        out: Path = typer.Option(..., help=DISTILL["out"]),
        base_url: list[str] = typer.Option([], help=DISTILL["base_url"]),
        api_key_env: str = typer.Option("OPENAI_API_KEY", help=DISTILL["api_key_env"]),
        adapter: str = typer.Option(None), format: str = typer.Option("auto"),
        system: str = typer.Option(None, help=DISTILL["system"]),
        n: int = typer.Option(1, help=DISTILL["n"]), max_new_tokens: int = typer.Option(256),
        temperature: float = typer.Option(0.0), top_p: float = typer.Option(1.0), seed: int = typer.Option(0),
        max_prompts: int = typer.Option(None), batch_size: int = typer.Option(8),
        keep_unfinished: bool = typer.Option(False, help=DISTILL["keep_unfinished"]),
        vllm: list[str] = typer.Option([], "--vllm", help=VLLM_HELP),
        no_cache: bool = typer.Option(False)) -> None:
    """A teacher answers the prompts; the output is ordinary SFT data."""
    options = dict(locals())  # the parameters are the job's fields, by name
    from sftlab.curate.jobs import DistillJob, run_distill

    job = DistillJob.from_mapping(options, "options")
    quiet()
    _run(run_distill, job)


@curate_app.command("best-of-k")
def curate_best_of_k(
        prompts: str = typer.Option(..., help=BEST_OF_K["prompts"]),
        policy: str = typer.Option("smollm2-135m-instruct", help=BEST_OF_K["policy"]),
        out: Path = typer.Option(..., help=BEST_OF_K["out"]),
        reward: str = typer.Option("gsm8k", help=BEST_OF_K["reward"]),
        judge: str = typer.Option("smollm2-135m-instruct", help=BEST_OF_K["judge"]),
        k: int = typer.Option(4), select: str = typer.Option("best", help=BEST_OF_K["select"]),
        min_score: float = typer.Option(None, help=BEST_OF_K["min_score"]),
        system: str = typer.Option(None, help=BEST_OF_K["system"]),
        base_url: list[str] = typer.Option([], help=BEST_OF_K["base_url"]),
        api_key_env: str = typer.Option("OPENAI_API_KEY"),
        adapter: str = typer.Option(None), format: str = typer.Option("auto"),
        max_new_tokens: int = typer.Option(256), temperature: float = typer.Option(0.8),
        top_p: float = typer.Option(0.95), seed: int = typer.Option(0), max_prompts: int = typer.Option(None),
        batch_size: int = typer.Option(8), no_cache: bool = typer.Option(False),
        keep_unfinished: bool = typer.Option(False, help=BEST_OF_K["keep_unfinished"]),
        vllm: list[str] = typer.Option([], "--vllm", help=VLLM_HELP)) -> None:
    """Sample k replies per prompt, score them, keep the best: rejection sampling."""
    options = dict(locals())  # the parameters are the job's fields, by name
    from sftlab.curate.jobs import BestOfKJob, run_best_of_k

    job = BestOfKJob.from_mapping(options, "options")
    quiet()
    _run(run_best_of_k, job)


def _run(run_job, job) -> None:
    """Run a curation job and print its summary; a model that fails to load is one error line too."""
    try:
        summary = run_job(job, console)
    except (SftlabError, RuntimeError, ValueError) as e:
        fail(e)
    console.print_json(json.dumps(summary.to_dict()))


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
    from sftlab.curate.jobs import run_filter_config
    from sftlab.yamlconfig import parse_set_items

    try:
        cfg = filter_config_with_options(config, parse_set_items(set_), pool=pool, output=out,
                                         output_format=out_format, target_size=target_size, eval_sets=eval_set,
                                         scorers=scorer, diversity=diversity)
        result = run_filter_config(cfg, console, overwrite)
        for step in result.funnel:
            console.print(f"  {step['stage']:<22} {step['in']:>7} -> {step['kept']:>7}  {step['dropped'] or ''}")
    except (SftlabError, ValueError) as e:
        fail(e)
