"""`sftlab curate filter`: a large pool in, a small, high-quality, diverse SFT set out, every decision explained.

Stages, in order (each optional and reported as one funnel step):
  read + validate -> exact dedup -> near dedup (MinHash LSH) -> decontaminate against eval sets ->
  heuristic quality rules -> model quality scores (+ min_quality) -> diverse selection of `target_size`.
Cheap stages run first so the expensive ones see fewer records. Outputs: the selected set (messages JSONL with
source id, scores and rank in `meta`), decisions.jsonl (one line per pool record: kept or the stage and reason
that dropped it), and a report (JSON, Markdown, PNG plots). The stages are `Stage` components (`stage.py`);
this module lists them for a config and runs them in turn.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from sftlab.curate.filter.config import FilterConfig, make_filter_config
from sftlab.curate.filter.pool import PoolRecord, read_pool
from sftlab.curate.filter.report import write_outputs
from sftlab.curate.filter.stage import Drop
from sftlab.curate.filter.stages import (
    Decontaminate,
    DiverseSelection,
    ExactDedup,
    Heuristics,
    ModelScores,
    NearDedup,
    PoolStage,
)

__all__ = ["FilterConfig", "FilterResult", "PoolRecord", "build_stages", "make_filter_config", "run_filter"]

DUPLICATE_EXAMPLES = 20  # duplicate pairs kept for the report


@dataclass
class FilterResult:
    selected: list[PoolRecord]
    records: list[PoolRecord]
    funnel: list[dict[str, Any]]
    report: dict[str, Any]


class _Funnel:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def add(self, stage: str, before: int, dropped: Counter, seconds: float, **extra: Any) -> None:
        self.steps.append({"stage": stage, "in": before, "kept": before - sum(dropped.values()),
                           "dropped": dict(dropped.most_common()), "seconds": round(seconds, 2), **extra})


def build_stages(cfg: FilterConfig) -> list[PoolStage]:
    """The stages a config switches on, cheapest first; diverse selection always runs last."""
    stages: list[PoolStage] = []
    if cfg.dedup.exact or cfg.dedup.exact_prompt:
        stages.append(ExactDedup(cfg.dedup))
    if cfg.dedup.near:
        stages.append(NearDedup(cfg.dedup))
    if cfg.decontaminate.eval:
        stages.append(Decontaminate(cfg.decontaminate))
    if cfg.heuristics is not None:
        stages.append(Heuristics(cfg.heuristics))
    if cfg.scorers:
        stages.append(ModelScores(cfg.scorers, cfg.min_quality, cfg.report_path / "scores.sqlite"))
    stages.append(DiverseSelection(cfg.diversity, cfg.target_size, cfg.seed))
    return stages


def _record_drop(rec: PoolRecord, label: str, drop: Drop, counts: Counter, dup_examples: list[dict]) -> None:
    """Mark `rec` dropped by the stage `label`, count its reason, keep a few duplicate pairs as examples."""
    rec.stage, rec.reason, rec.detail = label, drop.reason, drop.detail
    counts[drop.reason] += 1
    dup = drop.duplicate_of
    if dup is not None:
        rec.duplicate_of = dup.id
        if len(dup_examples) < DUPLICATE_EXAMPLES:
            dup_examples.append({"kind": drop.reason, "kept": dup.id, "dropped": rec.id,
                                 "kept_prompt": dup.prompt[:160], "dropped_prompt": rec.prompt[:160]})


def run_filter(cfg: FilterConfig, console: Console | None = None) -> FilterResult:
    """Read the pool, run every stage on what the previous one kept, write the selection and its report."""
    console = console or Console(stderr=True)
    funnel = _Funnel()
    t = time.time()
    spill = next(p for p in (cfg.report_path, *cfg.report_path.resolve().parents) if p.is_dir())  # output's disk
    records, skipped, sources = read_pool(cfg.pool, spill)
    funnel.add("read + validate", len(records) + sum(skipped.values()), skipped, time.time() - t)
    console.print(f"filter: read {len(records)} records ({sum(skipped.values())} skipped) from "
                  f"{len(cfg.pool)} source(s)")
    alive, dup_examples, artefacts = list(records), [], {}
    for stage in build_stages(cfg):
        if not alive and not stage.runs_on_empty:
            continue
        t, counts = time.time(), Counter()
        result = stage.run(alive, console.print)
        for rec, drop in result.dropped:
            _record_drop(rec, stage.drop_label, drop, counts, dup_examples)
        funnel.add(stage.name, len(alive), counts, time.time() - t, **result.funnel_extra)
        artefacts.update(result.artefacts)
        alive = result.kept
    if len(alive) < cfg.target_size:
        console.print(f"[yellow]filter: only {len(alive)} records passed every stage (target "
                      f"{cfg.target_size})[/]")
    report = write_outputs(cfg, records, alive, funnel.steps, sources, dup_examples, artefacts)
    console.print(f"filter: selected {len(alive)} of {len(records)} -> {cfg.output}; report in "
                  f"{cfg.report_path}")
    return FilterResult(alive, records, funnel.steps, report)
