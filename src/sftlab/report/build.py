"""`sftlab report RUN_DIR`: config and data summary, curation funnel, training curves, base vs tuned table and
side-by-side samples, as one self-contained HTML page (plots inlined) plus Markdown with PNG files.

Every number shown comes from the run's own files, read through `sftlab.artifacts` (config.yaml,
data_stats.json, metrics.jsonl, train_metrics.json, eval/eval.json, a curation summary or filter report);
report.json keeps what the page shows, and each number in the HTML carries a `data-key` so a test can check the
page against the JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftlab import plotting as plots
from sftlab.artifacts.layout import EvalFiles, RunFolder, find_curation, report_files
from sftlab.artifacts.records import (
    DataStats,
    Report,
    SuiteResult,
    TrainMetrics,
    check_record_folder,
    read_curation,
    read_metrics_log,
    read_record,
    write_record,
)
from sftlab.data.writers import atomic_open, write_text
from sftlab.errors import SftlabError
from sftlab.report.markdown import render_markdown
from sftlab.report.page import render_html
from sftlab.yamlconfig import read_yaml_mapping

CONFIG_KEYS = ["name", "model", "method", "epochs", "max_steps", "batch_size", "grad_accum", "learning_rate",
               "lr_scheduler", "optim", "precision", "max_length", "mask_mode", "seed", "output_dir"]
TRAINING_KEYS = ("train_runtime", "train_loss", "global_step", "tokens_seen", "trained_tokens_seen")


def find_inputs(run_dir: Path, eval_path: Path | None = None, curation_path: Path | None = None) -> dict[str, Path]:
    """The files a report is built from; a run folder may hold training directly or in train/."""
    if not run_dir.is_dir():
        raise SftlabError(f"{run_dir}: no such run folder")
    found: dict[str, Path] = {}
    run = RunFolder.find(run_dir)
    if run:
        found.update({key: path for key, path in [("config", run.config), ("data_stats", run.data_stats),
                                                  ("metrics", run.metrics), ("train_metrics", run.train_metrics)]
                      if path.exists()})
    ev = eval_path or EvalFiles.find_result(run_dir)
    if ev:
        found["eval"] = ev
    cur = curation_path or find_curation(run_dir)
    if cur:
        found["curation"] = cur
    if not found:
        raise SftlabError(f"{run_dir}: nothing to report (no config.yaml, metrics.jsonl or eval/eval.json)")
    return found


def _config_summary(path: Path) -> dict[str, Any]:
    cfg = read_yaml_mapping(path, "run config")
    out = {k: cfg[k] for k in CONFIG_KEYS if k in cfg}
    if cfg.get("method") == "lora" and cfg.get("lora"):
        out["lora"] = cfg["lora"]
    out["data"] = [d.get("path") if isinstance(d, dict) else d for d in cfg.get("data", [])]
    return out


def _training_summary(curves: list[dict[str, Any]] | None, tm: TrainMetrics | None) -> dict[str, Any] | None:
    """Steps and first/last loss from metrics.jsonl; runtime, tokens and trained tokens/s from train_metrics."""
    if curves is None and tm is None:
        return None
    out: dict[str, Any] = {}
    if curves is not None:
        losses = [r["loss"] for r in curves if "loss" in r]
        out = {"steps": max((r.get("step", 0) for r in curves), default=0),
               "first_loss": round(losses[0], 4) if losses else None,
               "last_loss": round(losses[-1], 4) if losses else None}
    if tm is not None:
        given = tm.to_dict()
        out.update({k: round(given[k], 4) if isinstance(given[k], float) else given[k]
                    for k in TRAINING_KEYS if k in given})
        if tm.train_runtime and tm.trained_tokens_seen:
            out["trained_tokens_per_s"] = round(tm.trained_tokens_seen / tm.train_runtime, 1)
    return out


def collect(inputs: dict[str, Path]) -> Report:
    """Everything the page shows, typed (this becomes report.json; the per-step curves stay out of it)."""
    curves = read_metrics_log(inputs["metrics"]) if "metrics" in inputs else None
    tm = read_record(inputs["train_metrics"], TrainMetrics) if "train_metrics" in inputs else None
    fields: dict[str, Any] = {"sources": {k: str(v) for k, v in inputs.items()}}
    if "config" in inputs:
        fields["config"] = _config_summary(inputs["config"])
    if "data_stats" in inputs:
        fields["data"] = read_record(inputs["data_stats"], DataStats)
    if curves is not None or tm is not None:
        fields["training"] = _training_summary(curves, tm)
    if "eval" in inputs:
        fields["eval"] = read_record(inputs["eval"], SuiteResult)
    if "curation" in inputs:
        fields["curation"] = read_curation(inputs["curation"])
    return Report(**fields, curves=curves or [])


def make_plots(rep: Report) -> dict[str, bytes]:
    figs: dict[str, bytes] = {}
    if rep.curves and (png := plots.training_curves(rep.curves)):
        figs["training_curves"] = png
    hist = rep.data.tokenized.get("length_histogram") if rep.data else None
    if hist:
        figs["length_histogram"] = plots.bar_chart(hist, "tokenized example length (tokens)", "tokens")
    if rep.curation and rep.curation.funnel():
        figs["curation_funnel"] = plots.bar_chart(rep.curation.funnel(), "curation funnel (records kept)",
                                                  horizontal=True)
    if rep.eval and (png := plots.metric_bars(rep.eval.metric_rows(), list(rep.eval.subjects))):
        figs["eval_rates"] = png
    return figs


def write_report(run_dir: Path, out_dir: Path | None = None, eval_path: Path | None = None,
                 curation_path: Path | None = None, title: str | None = None) -> tuple[Path, Path]:
    """Write report.html (self-contained), report.md + PNGs, and report.json into `out_dir` (run_dir/report)."""
    run_dir = Path(run_dir)
    out_dir = out_dir or run_dir / "report"
    page, md, js = report_files(out_dir)
    check_record_folder(out_dir, js, Report, "sftlab report")
    rep = collect(find_inputs(run_dir, eval_path, curation_path))
    figs = make_plots(rep)
    title = title or f"sftlab run report: {(rep.config or {}).get('name', run_dir.name)}"
    write_record(js, rep)  # first: a run stopped midway leaves a folder the next one knows as its own
    for name, png in figs.items():
        with atomic_open(out_dir / f"{name}.png", "wb") as f:
            f.write(png)
    write_text(page, render_html(rep, figs, title))
    write_text(md, render_markdown(rep, figs, title))
    return page, md
