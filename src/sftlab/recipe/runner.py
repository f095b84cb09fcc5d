"""`sftlab run RECIPE.yaml`: every stage in order into RUN/<stage>/, a finished stage with the same key skipped, an
unfinished one resumed, a changed one (and so every stage reading it) run again; then the run's report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from sftlab.errors import ConfigError
from sftlab.fsutil import OutputLock, marker_kind, write_marker
from sftlab.recipe.spec import Recipe, load_recipe
from sftlab.recipe.stages import RUNNERS, StageContext, check_stage, resolve, run_folder
from sftlab.recipe.state import STAGE_KIND, StageState, claim_stage_folder, stage_key, stage_refs

RUN_KIND = "recipe"


@dataclass
class RecipeRun:
    recipe: Recipe
    run_dir: Path
    seconds: float
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {status, seconds, key, outputs}


def _claim_run_dir(run_dir: Path) -> None:
    """The run folder is new, empty, or an earlier run of a recipe (never someone else's folder)."""
    if run_dir.exists() and any(run_dir.iterdir()) and marker_kind(run_dir) != RUN_KIND:
        raise ConfigError(f"{run_dir} exists and is not a recipe run folder; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    if marker_kind(run_dir) != RUN_KIND:
        write_marker(run_dir, RUN_KIND)


def _check_from(recipe: Recipe, from_stage: str | None) -> int:
    ids = [s.id for s in recipe.stages]
    if from_stage is None:
        return len(ids)
    if from_stage not in ids:
        raise ConfigError(f"--from {from_stage}: the recipe's stages are {', '.join(ids)}")
    return ids.index(from_stage)


def _run_stage(stage, ctx: StageContext, key: str, forced: bool, inputs: list[Path]) -> tuple[str, StageState]:
    """Skip, resume or (re)start one stage; returns what happened and the stage's final state."""
    folder = ctx.folder(stage.id)
    state = StageState.read(folder) if marker_kind(folder) == STAGE_KIND else None
    if state and state.key == key and state.status == "done" and not forced:
        return "skipped (done, unchanged)", state
    resuming = bool(state and state.key == key and not forced)
    if not resuming:
        claim_stage_folder(folder, keep=inputs)
    state = StageState(key, "running")
    state.write(folder)
    t0 = time.time()
    state.outputs = RUNNERS[stage.type](stage, folder, ctx, resuming)
    state.status, state.seconds = "done", time.time() - t0
    state.write(folder)
    return ("resumed" if resuming else "ran"), state


def run_recipe(path: str | Path, out: Path | None = None, from_stage: str | None = None, quick: bool = False,
               console: Console | None = None) -> RecipeRun:
    console = console or Console()
    recipe = load_recipe(path, quick=quick)
    run_dir = out or run_folder(recipe.name, quick)
    first_forced = _check_from(recipe, from_stage)
    ctx = StageContext(run_dir, {}, recipe.seed, quick, console, recipe.requires)
    for stage in recipe.stages:
        try:
            check_stage(stage, ctx)
        except (ConfigError, ValueError) as e:
            raise ConfigError(f"{path}: {e}") from None
    with OutputLock(run_dir):  # a second `sftlab run` into this folder stops here, before it changes anything
        _claim_run_dir(run_dir)
        run = _run_stages(recipe, ctx, path, first_forced)
        from sftlab.recipe.report import write_run_report

        page = write_run_report(run, path, quick)
    console.print(f"[green]{recipe.name} done in {run.seconds:.0f}s[/]: report {page}")
    return run


def _run_stages(recipe: Recipe, ctx: StageContext, path: str | Path, first_forced: int) -> RecipeRun:
    """Each stage in order: skipped, resumed or run; a stage reading one that ran or resumed now runs again."""
    run, keys, t0 = RecipeRun(recipe, ctx.run_dir, 0.0), {}, time.time()
    redone: set[str] = set()  # stages that ran or resumed now: a stage reading one runs again (same key or not)
    for i, stage in enumerate(recipe.stages):
        spec = stage.model_dump()
        keys[stage.id] = stage_key(spec, resolve(spec, ctx), keys, ctx.quick, ctx.seed)
        ctx.console.rule(f"[bold]{recipe.name}[/]: stage {stage.id} ({stage.type})")
        forced = i >= first_forced or bool(stage_refs(spec) & redone)
        what, state = _run_stage(stage, ctx, keys[stage.id], forced, _inputs(path))
        if not what.startswith("skipped"):
            redone.add(stage.id)
        ctx.outputs[stage.id] = state.outputs or {}
        run.stages[stage.id] = {"type": stage.type, "status": what, "seconds": round(state.seconds, 1),
                                "key": keys[stage.id], "outputs": state.outputs}
        ctx.console.print(f"stage {stage.id}: {what} ({state.seconds:.0f}s)")
    run.seconds = time.time() - t0
    return run


def _inputs(path: str | Path) -> list[Path]:
    """Never remove a folder that holds the recipe file itself."""
    return [Path(path)]
