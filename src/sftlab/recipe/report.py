"""A recipe run's report: every stage (what ran, how long, the curation funnels), base vs each trained model, the
head-to-head comparisons, and result.json: the rows RESULTS.md shows for this recipe."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from sftlab.artifacts.layout import RunFolder
from sftlab.artifacts.records import DataStats, SuiteResult, read_record
from sftlab.artifacts.render import ci_text, cut_off_text, suite_markdown, value_text
from sftlab.data.writers import write_json, write_text
from sftlab.errors import ConfigError


def machine() -> str:
    """Where the numbers came from: the GPU, or the CPU's model, core count and whether it has fast bf16 (times differ
    2x between CPUs of the same core count)."""
    import torch

    from sftlab.models.loading import fast_bf16

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    precision = "fast bf16" if fast_bf16("cpu") else "no fast bf16"
    return f"{cpu_model() or platform.machine() + ' CPU'}, {os.cpu_count()} cores, {precision}"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's marketing name from /proc/cpuinfo (Linux), e.g. "AMD EPYC"; None where it is not readable."""
    try:
        lines = cpuinfo.read_text(errors="replace").splitlines()
    except OSError:
        return None
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name") and ":" in line]
    return names[0] if names and names[0] else None


def _examples(train_out: dict[str, Any]) -> int | None:
    try:
        stats = read_record(RunFolder(Path(train_out["run_dir"])).data_stats, DataStats)
    except Exception:  # noqa: BLE001 - a missing count is shown as "?", not a failed report
        return None
    return stats.tokenized.get("examples")


def _train_cost(train_out: dict[str, Any]) -> dict[str, Any]:
    """Training time and peak memory (resident, or the GPU's peak allocation), from the run's metrics.jsonl."""
    from sftlab.artifacts.records import read_metrics_log

    rows = read_metrics_log(RunFolder(Path(train_out["run_dir"])).metrics)
    rss = [r["rss_mb"] for r in rows if "rss_mb" in r]
    gpu = [r["gpu_peak_mb"] for r in rows if "gpu_peak_mb" in r]
    return {"train_s": round((train_out.get("metrics") or {}).get("train_runtime") or 0),
            "peak_memory_mb": max(gpu or rss or [0]), "memory_kind": "gpu" if gpu else "rss"}


def _metric(res: SuiteResult, spec: str) -> dict[str, Any]:
    """EVALUATOR.METRIC -> {base, tuned} metrics, or EVALUATOR (a judge) -> its pairwise verdict."""
    name, _, key = spec.partition(".")
    entry = res.evaluators.get(name)
    if entry is None:
        return {"name": spec, "missing": f"no evaluator '{name}' (has {', '.join(res.evaluators)})"}
    if "pairwise" in entry:
        return {"name": spec, "pairwise": entry["pairwise"]}
    per = entry.get("metrics", {}).get(key)
    if per is None:
        return {"name": spec, "missing": f"evaluator '{name}' has no metric '{key}'"}
    return {"name": spec, **per}


def _when_and_where(run, recipe_path: str | Path, quick: bool) -> dict[str, Any]:
    """What every result carries: the stage time, the command that reruns it, the date and the machine."""
    return {"wall_s": round(sum(s["seconds"] for s in run.stages.values())),
            "command": f"sftlab run {recipe_path}" + (" --quick" if quick else ""),
            "date": time.strftime("%Y-%m-%d"), "machine": machine()}


def result_rows(run, recipe_path: str | Path, quick: bool) -> list[dict[str, Any]]:
    """One row per trained model of the result's eval stage (and one per head-to-head pair)."""
    spec, recipe = run.recipe.result, run.recipe
    if spec is None or spec.eval is None:
        return []
    results = run.stages[spec.eval]["outputs"]["results"]
    common = {"recipe": recipe.name, "student": recipe.student, "teacher": recipe.teacher,
              **_when_and_where(run, recipe_path, quick), "quick": quick}
    rows = []
    for model, path in results.items():
        res = read_record(Path(path), SuiteResult)
        train_out = run.stages[model]["outputs"]
        rows.append({**common, "model": model, "method": spec.method.get(model, train_out.get("method", "")),
                     "examples": _examples(train_out), **_train_cost(train_out),
                     "metrics": [_metric(res, m) for m in spec.metrics]})
    for pair, path in run.stages[spec.eval]["outputs"].get("head_to_head", {}).items():
        judged = [m for m in (_metric(read_record(Path(path), SuiteResult), x) for x in spec.metrics)
                  if "pairwise" in m]  # a head-to-head run holds only the judge evaluators
        rows.append({**common, "model": pair, "method": spec.method.get(pair, "head to head"), "metrics": judged})
    return rows


def metric_text(m: dict[str, Any], label: str) -> str:
    if "missing" in m:
        return "-"
    if "pairwise" in m:
        p = m["pairwise"]
        a, b = p["labels"]
        return (f"{a} wins {p.get(f'{a}_win_rate')}, {b} wins {p.get(f'{b}_win_rate')}, ties {p.get('tie_rate')} "
                f"(n={p.get('n')}, {p.get('inconsistent_orders')} order-inconsistent){cut_off_text(p)}") \
            if label != "base" else ""
    x = m.get(label)
    return f"{value_text(x)} {ci_text(x)} n={x.get('n')}" if x else "-"


def _stage_lines(run) -> list[str]:
    lines = ["| stage | type | status | seconds | outputs |", "|---|---|---|---|---|"]
    for sid, s in run.stages.items():
        out = s["outputs"] or {}
        shown = out.get("made") or out.get("summary") or out.get("funnel") or out.get("metrics") or out.get("results")
        text = json.dumps(shown, ensure_ascii=False, default=str)
        lines.append(f"| {sid} | {s['type']} | {s['status']} | {s['seconds']:.0f} | "
                     f"{text[:300].replace('|', '/')} |")
    return lines


def _eval_sections(run) -> list[str]:
    out = []
    for sid, s in run.stages.items():
        if s["type"] != "eval":
            continue
        for name, path in {**s["outputs"]["results"], **s["outputs"].get("head_to_head", {})}.items():
            res = read_record(Path(path), SuiteResult)
            out += [f"## {sid}: {name}", "", suite_markdown(res, level=3, samples=4)]  # holds the judge sentences
    return out


def _train_reports(run) -> None:
    """The full run report (curves, data, samples) of every trained model, beside the recipe report."""
    from sftlab.report.build import write_report

    evals = {m: p for s in run.stages.values() if s["type"] == "eval" for m, p in s["outputs"]["results"].items()}
    for sid, s in run.stages.items():
        if s["type"] == "train":
            write_report(Path(s["outputs"]["run_dir"]), run.run_dir / "report" / sid,
                         Path(evals[sid]) if sid in evals else None)


def write_run_report(run, recipe_path: str | Path, quick: bool) -> Path:
    rows = result_rows(run, recipe_path, quick)
    missing = sorted({m["missing"] for r in rows for m in r["metrics"] if "missing" in m})
    if missing:  # a typo in result.metrics: the stages stay done, so fixing it reruns nothing
        raise ConfigError(f"{recipe_path}: result.metrics: {'; '.join(missing)}")
    measures = {m: run.stages[m]["outputs"]["made"] for m in (run.recipe.result.measures if run.recipe.result else [])}
    write_json(run.run_dir / "result.json", {"recipe": run.recipe.name, "rows": rows, "measures": measures,
                                             **_when_and_where(run, recipe_path, quick)})
    _train_reports(run)
    lines = [f"# Recipe {run.recipe.name}", "", run.recipe.description, "",
             f"`sftlab run {recipe_path}`{' --quick (tiny models: the numbers mean nothing)' if quick else ''}; "
             f"{sum(s['seconds'] for s in run.stages.values()):.0f}s of stage time on {machine()}.", "",
             *_stage_lines(run), "", *_eval_sections(run), ""]
    page = run.run_dir / "report.md"
    write_text(page, "\n".join(lines))
    return page
