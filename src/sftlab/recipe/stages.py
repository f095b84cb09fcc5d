"""What each stage type does: call the pipeline that `sftlab curate|train|eval` calls, with its output in the stage
folder, and return what later stages and the report need (as JSON)."""

from __future__ import annotations

import gc
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from rich.console import Console

from sftlab.errors import ConfigError
from sftlab.recipe.preparers import PREPARERS
from sftlab.recipe.spec import REF, RUN_REF
from sftlab.userfn import import_callable


@dataclass
class StageContext:
    """What a stage sees: the run folder, every earlier stage's outputs, the seed and quick switch, a console."""

    run_dir: Path
    outputs: dict[str, dict[str, Any]]
    seed: int
    quick: bool
    console: Console
    requires: list[str] = field(default_factory=list)  # recipes whose runs this one reads

    def folder(self, stage_id: str) -> Path:
        return self.run_dir / stage_id


def run_folder(recipe_name: str, quick: bool) -> Path:
    """Where a recipe runs by default (its quick variant beside it)."""
    return Path("runs") / (recipe_name + ("-quick" if quick else ""))


def _other_run(name: str, ctx: StageContext) -> str:
    """`${run:NAME}`: the folder of another recipe's finished run (e.g. training on another recipe's curated data)."""
    folder = run_folder(name, ctx.quick)
    if not (folder / "result.json").exists():
        raise ConfigError(f"this recipe reads the run of recipe '{name}' in {folder}, which has not finished: "
                          f"run `sftlab run recipes/{name.replace('-', '_')}.yaml{' --quick' if ctx.quick else ''}` "
                          "first")
    return str(folder)


def resolve(value: Any, ctx: StageContext) -> Any:
    """`${id}` -> that stage's folder, `${resources}` -> the shipped data, `${heldout:KIND}` -> held-out prompts,
    `${run:NAME}` -> another recipe's run folder."""
    if isinstance(value, str):
        value = RUN_REF.sub(lambda m: _other_run(m.group(1), ctx), value)
        if value.startswith("${heldout:") and value.endswith("}"):
            from sftlab.data.shipped import heldout_prompts

            prompts = heldout_prompts(value[len("${heldout:"):-1])
            return prompts[:3] if ctx.quick else prompts
        resources = str(files("sftlab") / "resources")
        return REF.sub(lambda m: resources if m.group(1) == "resources" else str(ctx.folder(m.group(1))), value)
    if isinstance(value, dict):
        return {k: resolve(v, ctx) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [resolve(v, ctx) for v in value]
    return value


def preparer(stage) -> Callable[..., Any]:
    """A prepare stage's function; a parameter it does not take is a ConfigError (checked before any stage runs)."""
    fn = import_callable(PREPARERS.get(stage.function, stage.function), "preparer")
    try:
        inspect.signature(fn).bind(Path(), seed=0, quick=False, **stage.params)
    except TypeError as e:
        takes = [p for p in inspect.signature(fn).parameters if p not in ("out", "seed", "quick")]
        raise ConfigError(f"stage {stage.id}: preparer '{stage.function}': {e} (its params: "
                          f"{', '.join(takes) or 'none'})") from None
    return fn


def run_prepare(stage, folder: Path, ctx: StageContext, resuming: bool) -> dict[str, Any]:
    fn = preparer(stage)
    made = fn(folder, seed=ctx.seed, quick=ctx.quick, **resolve(stage.params, ctx))
    return {"made": made}


def _curation_job(stage, folder: Path, ctx: StageContext):
    from sftlab.curate.jobs import BestOfKJob, DistillJob

    job = DistillJob if stage.type == "distill" else BestOfKJob
    return job.from_mapping({**resolve(stage.job, ctx), "out": str(folder / "data.jsonl")}, f"stage {stage.id}")


def run_distill(stage, folder: Path, ctx: StageContext, resuming: bool) -> dict[str, Any]:
    from sftlab.curate.jobs import run_distill

    summary = run_distill(_curation_job(stage, folder, ctx), ctx.console)
    return {"data": str(folder / "data.jsonl"), "summary": summary.to_dict()}


def run_best_of_k(stage, folder: Path, ctx: StageContext, resuming: bool) -> dict[str, Any]:
    from sftlab.curate.jobs import run_best_of_k

    summary = run_best_of_k(_curation_job(stage, folder, ctx), ctx.console)
    return {"data": str(folder / "data.jsonl"), "summary": summary.to_dict()}


def _filter_config(stage, folder: Path, ctx: StageContext):
    from sftlab.curate.filter.config import make_filter_config

    return make_filter_config({**resolve(stage.config, ctx), "output": str(folder / "selected.jsonl")},
                              f"stage {stage.id}")


def run_filter(stage, folder: Path, ctx: StageContext, resuming: bool) -> dict[str, Any]:
    from sftlab.curate.jobs import run_filter_config

    result = run_filter_config(_filter_config(stage, folder, ctx), ctx.console, overwrite=True)
    return {"data": str(folder / "selected.jsonl"), "funnel": result.funnel}


def _train_config(stage, folder: Path, ctx: StageContext):
    from sftlab.train.config import make_config

    return make_config({**resolve(stage.config, ctx), "name": stage.id, "output_dir": str(folder / "model")},
                       f"stage {stage.id}")


def run_train(stage, folder: Path, ctx: StageContext, resuming: bool) -> dict[str, Any]:
    from sftlab.artifacts.layout import RunFolder
    from sftlab.train.run import train

    cfg = _train_config(stage, folder, ctx)
    resume = resuming and any(RunFolder(folder / "model").checkpoints.glob("checkpoint-*"))
    result = train(cfg, resume=resume, overwrite=not resume, console=ctx.console)
    return {"base_model": result.base_model, "model_spec": cfg.model, "final_dir": str(result.final_dir),
            "method": cfg.method, "run_dir": str(result.run_dir), "metrics": result.metrics}


def _subjects(train_out: dict[str, Any], cache: Path, stage, ctx: StageContext) -> list:
    """[base, tuned]; generations already made by the runs this recipe requires are reused."""
    from sftlab.evaluate.subjects import load_subjects
    from sftlab.models.loading import recorded_model

    weights = {"adapter" if train_out["method"] == "lora" else "tuned": train_out["final_dir"]}
    reuse = [run_folder(name, ctx.quick) / "generations.sqlite" for name in ctx.requires]
    base = recorded_model(train_out["base_model"], train_out.get("model_spec"))
    return load_subjects(base, cache_path=cache, batch_size=stage.batch_size, dtype=stage.dtype,
                         reuse=reuse, **weights)


def _suite(stage, folder: Path, ctx: StageContext):
    from sftlab.evaluate.suite import make_suite

    return make_suite(resolve(stage.suite, ctx), f"stage {stage.id}")


def run_eval(stage, folder: Path, ctx: StageContext, resuming: bool) -> dict[str, Any]:
    """Base vs each trained model on the whole suite; then the head-to-head pairs on its judge evaluators."""
    from sftlab.artifacts.render import print_suite
    from sftlab.evaluate.runner import run_suite, write_result
    from sftlab.evaluate.suite import JudgeEval, check_suite_files

    suite = _suite(stage, folder, ctx)
    check_suite_files(suite)
    # run-level: a rerun after a scoring-only change (judge, rubric, metric) regenerates nothing; the keys hold
    # each model's weights fingerprint, template, dtype, prompt and sampling parameters
    cache, made, pairs = ctx.run_dir / "generations.sqlite", {}, {}
    judges: dict[str, Any] = {}  # one judge per judge evaluator for the whole stage: the base's answers graded once
    for model in stage.models:
        subjects = _subjects(ctx.outputs[model], cache, stage, ctx)
        res = run_suite(suite, subjects, log=ctx.console.print, judges=judges)
        made[model] = str(write_result(res, folder / model)[0])
        print_suite(res, ctx.console, samples=3)
        del subjects
        gc.collect()
    judge_evals = [ev for ev in suite.evaluators if isinstance(ev, JudgeEval)]
    if stage.head_to_head and not judge_evals:
        raise ConfigError(f"stage {stage.id}: head_to_head needs a judge evaluator in the suite")
    for a, b in stage.head_to_head:
        pair = [_subjects(ctx.outputs[m], cache, stage, ctx)[1] for m in (b, a)]
        pair[0].label, pair[1].label = b, a  # the cache keys stay those of the vs-base run: no new generations
        res = run_suite(suite.model_copy(update={"evaluators": judge_evals}), pair, log=ctx.console.print,
                        judges=judges)
        pairs[f"{a}_vs_{b}"] = str(write_result(res, folder / f"{a}_vs_{b}")[0])
        print_suite(res, ctx.console, samples=0)
        del pair
        gc.collect()
    return {"results": made, "head_to_head": pairs}


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "prepare": run_prepare, "distill": run_distill, "best_of_k": run_best_of_k, "filter": run_filter,
    "train": run_train, "eval": run_eval}


CONFIGS: dict[str, Callable[..., Any]] = {
    "prepare": lambda stage, folder, ctx: preparer(stage), "distill": _curation_job, "best_of_k": _curation_job,
    "filter": _filter_config, "train": _train_config, "eval": _suite}


def check_stage(stage, ctx: StageContext) -> None:
    """Validate a stage's config as its runner will, before any stage runs: a typo fails now, not hours in. The
    files it names need not exist yet (earlier stages make them)."""
    CONFIGS[stage.type](stage, ctx.folder(stage.id), ctx)
