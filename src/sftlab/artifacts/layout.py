"""The run folder's file names, in one place:

    <run>/                      a training run (or <run>/train/ beside eval/ and report/, as the demo writes it)
      config.yaml  data_stats.json  metrics.jsonl  train_metrics.json  sftlab-run.json
      tb/  checkpoints/  final/
    <run>/eval/eval.json, eval.md, generations.sqlite
    <run>/curation/*.summary.json (distill, best-of-k) or [*.report/]curation_report.json (filter)
    <run>/report/report.html, report.md, report.json, *.png
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sftlab.fsutil import MARKER


@dataclass(frozen=True)
class RunFolder:
    """A training run's folder: every file `sftlab train` writes there."""

    root: Path

    config = property(lambda self: self.root / "config.yaml")
    data_stats = property(lambda self: self.root / "data_stats.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    train_metrics = property(lambda self: self.root / "train_metrics.json")
    marker = property(lambda self: self.root / MARKER)
    tensorboard = property(lambda self: self.root / "tb")
    checkpoints = property(lambda self: self.root / "checkpoints")
    final = property(lambda self: self.root / "final")

    def is_training_run(self) -> bool:
        return self.metrics.exists() or self.config.exists()

    @classmethod
    def find(cls, run_dir: Path) -> RunFolder | None:
        """The training run in `run_dir`: the folder itself, or its train/ (the demo's layout)."""
        return next((f for f in (cls(run_dir), cls(run_dir / "train")) if f.is_training_run()), None)


@dataclass(frozen=True)
class EvalFiles:
    """An evaluation's output folder: the suite result as JSON and Markdown, and the generation cache."""

    root: Path
    stem: str = "eval"

    json = property(lambda self: self.root / f"{self.stem}.json")
    markdown = property(lambda self: self.root / f"{self.stem}.md")
    cache = property(lambda self: self.root / "generations.sqlite")

    @staticmethod
    def find_result(run_dir: Path) -> Path | None:
        """A run's suite result: <run>/eval/eval.json, else <run>/eval.json."""
        return next((p for p in (EvalFiles(run_dir / "eval").json, EvalFiles(run_dir).json) if p.exists()), None)


CURATION_SUMMARY_SUFFIX = ".summary.json"  # distill / best-of-k: <out>.summary.json beside <out>.jsonl
FILTER_REPORT_NAME = "curation_report.json"  # filter: <report_dir>/curation_report.json


def find_curation(run_dir: Path) -> Path | None:
    """A run's curation record: a filter report under curation/ (or in its <out>.report/ folder there), else a
    distill/best-of-k summary there."""
    found = sorted(run_dir.glob(f"curation/*{FILTER_REPORT_NAME}")) + sorted(
        run_dir.glob(f"curation/*/{FILTER_REPORT_NAME}")) + sorted(run_dir.glob(f"curation/*{CURATION_SUMMARY_SUFFIX}"))
    return found[0] if found else None


def report_files(root: Path) -> tuple[Path, Path, Path]:
    """A run report's page, Markdown and JSON in its folder (default <run>/report; plots beside them as NAME.png)."""
    return root / "report.html", root / "report.md", root / "report.json"
