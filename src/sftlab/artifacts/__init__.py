"""What a run leaves on disk, owned in one place: the folder layout (`layout`), the typed records in its JSON files
(`records`), and the one renderer of an evaluation result (`render`). A shared service below every stage: train,
curate and evaluate write through it; report, demo and the CLI read through it."""

from sftlab.artifacts.layout import EvalFiles, ReportFiles, RunFolder
from sftlab.artifacts.records import (
    SCHEMA_VERSION,
    CurationSummary,
    DataStats,
    FilterReport,
    Report,
    SuiteResult,
    TrainMetrics,
    read_curation,
    read_metrics_log,
    read_record,
    write_record,
)

__all__ = ["SCHEMA_VERSION", "CurationSummary", "DataStats", "EvalFiles", "FilterReport", "Report", "ReportFiles",
           "RunFolder", "SuiteResult", "TrainMetrics", "read_curation", "read_metrics_log", "read_record",
           "write_record"]
