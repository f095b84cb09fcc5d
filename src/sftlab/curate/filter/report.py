"""What `sftlab curate filter` writes: the selected set, one decision per pool record, and the curation report
(JSON for tools, Markdown for people, PNG plots)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from sftlab.artifacts.layout import FILTER_REPORT_NAME
from sftlab.artifacts.records import FilterReport, write_record
from sftlab.curate.filter.config import FilterConfig
from sftlab.curate.filter.plots import filter_plots
from sftlab.curate.filter.pool import PoolRecord
from sftlab.data.set_writers import write_conversations
from sftlab.data.writers import atomic_open, write_text


def _selected_record(rank: int, r: PoolRecord) -> dict[str, Any]:
    """A kept record as written: messages, with its source, id, rank and scores in `meta`."""
    d = r.conv.to_dict()
    d["id"] = r.id
    d["meta"] = {**d.get("meta", {}), "source": r.source, "source_id": r.id, "location": r.location,
                 "rank": rank, "scores": r.scores}
    return d


def write_outputs(cfg: FilterConfig, records: list[PoolRecord], selected: list[PoolRecord],
                  funnel: list[dict[str, Any]], sources: list[dict[str, Any]], dup_examples: list[dict[str, str]],
                  selection: dict[str, Any]) -> dict[str, Any]:
    """The selected set, decisions.jsonl and the report (JSON, Markdown, PNG plots); returns the report."""
    rep_dir = cfg.report_path
    rep_dir.mkdir(parents=True, exist_ok=True)
    write_conversations(cfg.output, (_selected_record(rank, r) for rank, r in enumerate(selected)),
                        cfg.output_format, keep=[s.path for s in [*cfg.pool, *cfg.decontaminate.eval]])
    with atomic_open(rep_dir / "decisions.jsonl") as f:
        for r in records:
            row = {"id": r.id, "source": r.source, "location": r.location, "kept": not r.stage,
                   "stage": r.stage or "selected", "reason": r.detail or r.reason, "duplicate_of": r.duplicate_of,
                   "scores": r.scores}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    examples: dict[str, list[dict[str, str]]] = {}
    for r in records:
        if r.stage:
            key = f"{r.stage}: {r.reason}"
            bucket = examples.setdefault(key, [])
            if len(bucket) < cfg.examples_per_reason:
                bucket.append({"id": r.id, "prompt": r.prompt[:200], "response": r.response[:300],
                               "reason": r.detail or r.reason})
    score_names = sorted({k for r in records for k in r.scores})
    dist = {}
    for name in score_names:
        kept = [r.scores[name] for r in selected if r.scores.get(name) is not None]
        allv = [r.scores[name] for r in records if r.scores.get(name) is not None]
        dist[name] = {"all": _summary(allv), "selected": _summary(kept)}
    report = {"output": cfg.output, "pool_records": len(records), "selected": len(selected),
              "target_size": cfg.target_size, "funnel": funnel, "sources": sources, "score_distributions": dist,
              "removed_examples": examples, "duplicates": dup_examples,
              "config": json.loads(cfg.model_dump_json())}
    figs = filter_plots(records, selected, funnel, score_names, selection.get("embeddings"),
                        selection.get("chosen", []))
    for name, png in figs.items():
        (rep_dir / f"{name}.png").write_bytes(png)
    report["plots"] = sorted(f"{n}.png" for n in figs)
    write_record(rep_dir / FILTER_REPORT_NAME, FilterReport(**report))
    write_text(rep_dir / "curation_report.md", report_markdown(report))
    return report


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.array(values, dtype=float)
    return {"n": len(a), "mean": round(float(a.mean()), 4), "p10": round(float(np.percentile(a, 10)), 4),
            "p50": round(float(np.percentile(a, 50)), 4), "p90": round(float(np.percentile(a, 90)), 4)}


def report_markdown(rep: dict[str, Any]) -> str:
    """The curation report for people: funnel, scores, coverage, duplicates and removed examples."""
    lines = [f"# Curation report: {rep['output']}", "",
             f"Selected **{rep['selected']}** of **{rep['pool_records']}** pool records (target "
             f"{rep['target_size']}).", "", "## Funnel", "", "| stage | in | kept | dropped (reason: count) | s |",
             "|---|---|---|---|---|"]
    for s in rep["funnel"]:
        why = "; ".join(f"{k}: {v}" for k, v in s["dropped"].items()) or "-"
        lines.append(f"| {s['stage']} | {s['in']} | {s['kept']} | {why} | {s['seconds']} |")
    lines += ["", "![funnel](funnel.png)", ""]
    if rep["score_distributions"]:
        lines += ["## Scores", "", "| score | all (mean, p10/p50/p90) | selected (mean, p10/p50/p90) |",
                  "|---|---|---|"]
        for name, d in rep["score_distributions"].items():
            cells = [f"{x['mean']} ({x['p10']}/{x['p50']}/{x['p90']}, n={x['n']})" if x else "-"
                     for x in (d["all"], d["selected"])]
            lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
        lines += [""] + [f"![{p}]({p})" for p in rep["plots"] if p.startswith("score_")] + [""]
    if "prompt_map.png" in rep["plots"]:
        lines += ["## Coverage", "", "![prompt map](prompt_map.png)", ""]
    if rep["duplicates"]:
        lines += ["## Duplicates found (examples)", ""]
        lines += [f"- {d['kind']}: `{d['dropped']}` copies `{d['kept']}`: {d['dropped_prompt'][:100]!r}"
                  for d in rep["duplicates"][:10]]
        lines.append("")
    if rep["removed_examples"]:
        lines += ["## Removed records, by reason (examples)", ""]
        for reason, exs in rep["removed_examples"].items():
            lines.append(f"### {reason}")
            for e in exs:
                lines.append(f"- `{e['id']}` prompt: {' '.join(e['prompt'].split())[:120]!r} / response: "
                             f"{' '.join(e['response'].split())[:160]!r}")
            lines.append("")
    return "\n".join(lines)
