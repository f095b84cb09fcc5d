"""Typed records of a run's JSON files, each with a `schema_version`. A file written before records had one
(no `schema_version`) reads as version 1, its first shape. Records keep keys they do not declare, so a
newer writer's extra fields survive a read and a rewrite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, with_config
from typing_extensions import TypedDict

from sftlab.artifacts.layout import CURATION_SUMMARY_SUFFIX, FILTER_REPORT_NAME
from sftlab.errors import ConfigError, DataError, SftlabError
from sftlab.textutil import not_utf8

SCHEMA_VERSION = 1


class Record(BaseModel):
    """A JSON file of a run: read and written only through `read_record` / `write_record`."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_version: int = SCHEMA_VERSION
    always_written: ClassVar[tuple[str, ...]] = ()  # fields written even when left at their default

    def to_dict(self) -> dict[str, Any]:
        """What the file holds: the current schema version, then the fields that were given (none invented)."""
        given = self.model_fields_set | set(self.model_extra or {}) | {
            k for k, f in type(self).model_fields.items() if f.default_factory is not None}  # containers: filled later
        data = self.model_dump(mode="json", include=given, by_alias=True)
        head = {"schema_version": SCHEMA_VERSION, **{k: getattr(self, k) for k in self.always_written}}
        nested = {k: v.to_dict() for k in data if isinstance(v := getattr(self, k, None), Record)}
        return {**head, **{k: nested.get(k, v) for k, v in data.items() if k not in head}}


class DataStats(Record):
    """data_stats.json: per-source read/loaded/skipped counts, tokenization stats, the chat template used."""

    sources: list[dict[str, Any]] = Field(default_factory=list)
    tokenized: dict[str, Any] = Field(default_factory=dict)
    chat_template: str | None = None


class TrainMetrics(Record):
    """train_metrics.json: Trainer's final metrics plus sftlab's token counts and what the run switched on."""

    train_runtime: float | None = None
    train_loss: float | None = None
    global_step: int | None = None
    tokens_seen: int | None = None
    trained_tokens_seen: int | None = None
    padding_share: float | None = None


@with_config(ConfigDict(extra="allow"))
class Metric(TypedDict, total=False):
    """One number for one model: value, sample size, Wilson 95% interval for rates (extras such as ppl)."""

    value: float | None
    n: int
    ci95: list[float]


@with_config(ConfigDict(extra="allow"))
class Pairwise(TypedDict, total=False):
    """A judge's comparison of two models; per-model keys are named after the labels (`tuned_win_rate`)."""

    judge: str
    kind: str
    labels: list[str]
    n: int
    tie_rate: float | None
    ci95: list[float] | None
    inconsistent_orders: int
    unparseable: int
    one_cut_off: dict[str, int]  # pairs where only one answer ended: whom the judge preferred
    by_cut_off_rule: int  # `cut_off: loses`: pairs decided without the judge
    both_ended: dict[str, int]  # `cut_off: loses`: the judge's verdicts on the pairs it was asked about


class EvaluatorResult(TypedDict, total=False):
    """One evaluator's entry: metrics[metric][model label], or a pairwise comparison; side-by-side samples."""

    type: str
    metrics: dict[str, dict[str, Metric]]
    pairwise: Pairwise
    samples: list[dict[str, Any]]


LOWER_IS_BETTER = frozenset({"loss", "eval_loss", "response_nll", "general_answered_with_identity",
                             "ran_into_new_turn"})  # every other metric: higher is better


class SuiteResult(Record):
    """eval.json: an evaluation suite run on two (or more) models with the same prompts and decoding."""

    suite: str
    subjects: dict[str, str]  # label -> model id, in the order the models were evaluated
    evaluators: dict[str, EvaluatorResult] = Field(default_factory=dict)

    def metric_rows(self) -> list[tuple[str, str, dict[str, Metric]]]:
        """(evaluator, metric, {label: metric}) in suite order: the rows of every table of this result."""
        return [(name, key, per) for name, entry in self.evaluators.items()
                for key, per in entry.get("metrics", {}).items()]

    def pairwise(self) -> list[tuple[str, Pairwise]]:
        return [(name, entry["pairwise"]) for name, entry in self.evaluators.items() if "pairwise" in entry]


class CurationSummary(Record):
    """<out>.summary.json of `curate distill` / `curate best-of-k` (best-of-k adds k, reward, pass@1, pass@k...)."""

    kind: Literal["curation_summary"] = "curation_summary"
    always_written: ClassVar[tuple[str, ...]] = ("kind",)
    prompts: int = 0
    already_done: int = 0
    processed: int = 0
    records_written: int = Field(0, validation_alias="records")  # early files named it `records`
    records_in_file: int | None = None
    samples: int | None = None
    skipped: dict[str, int] = Field(default_factory=dict)

    def funnel(self) -> dict[str, int]:
        return {"prompts": self.prompts, "processed": self.processed, "records written": self.records_written}


@with_config(ConfigDict(extra="allow"))
class FunnelStep(TypedDict, total=False):
    """One filter stage: how many records went in, how many it kept, and why the rest were dropped."""

    stage: str
    kept: int
    dropped: dict[str, int]
    seconds: float


class FilterReport(Record):
    """curation_report.json of `curate filter`: the funnel (records kept after each stage), scores, examples."""

    kind: Literal["filter_report"] = "filter_report"
    always_written: ClassVar[tuple[str, ...]] = ("kind",)
    output: str | None = None
    pool_records: int = 0
    selected: int = 0
    target_size: int | None = None
    funnel_steps: list[FunnelStep] = Field(default_factory=list, alias="funnel")

    def funnel(self) -> dict[str, int]:
        return {step["stage"]: step["kept"] for step in self.funnel_steps}


class Report(Record):
    """report.json: what the run report shows, each number from the run's own files."""

    sources: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any] | None = None
    data: DataStats | None = None
    training: dict[str, Any] | None = None
    eval: SuiteResult | None = None
    curation: CurationSummary | FilterReport | None = None
    curves: list[dict[str, Any]] = Field(default_factory=list, exclude=True)  # metrics.jsonl rows: plotted, not kept


R = TypeVar("R", bound=Record)


def read_json(path: Path) -> Any:
    """A JSON file; one that is not JSON, or not UTF-8 (`report --eval/--curation` given the wrong file), is a
    DataError naming it."""
    try:
        return json.loads(_read_utf8(path))
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON (line {e.lineno}: {e.msg})", source=str(path)) from None


def _read_utf8(path: Path) -> str:
    """The file's text; a byte that is not UTF-8 is a DataError naming its line, which an editor can go to."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        message, line = not_utf8(raw, e)
        raise DataError(message, source=str(path), record=f"line {line}", reason="not UTF-8") from None


def read_record(path: Path, kind: type[R]) -> R:
    """Read one record; a file of another shape is a DataError naming the file and the field."""
    return _validate(kind, read_json(path), path)


def check_record_folder(folder: Path, record: Path, kind: type[R], command: str, leftovers: tuple[str, ...] = ()
                        ) -> None:
    """An output folder is new, empty, or `command`'s own earlier output (its `record` reads as `kind`, or it holds
    only `leftovers` of a crashed run): a folder of the user's is never written into."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; `{command}` writes into a folder")
    if not folder.is_dir() or all(p.name.startswith(leftovers) for p in folder.iterdir()):
        return
    try:
        read_record(record, kind)
    except (SftlabError, OSError):
        raise ConfigError(f"{folder} already holds files that `{command}` did not write (no {record.name} of its "
                          "own); choose another --out") from None


def _validate(kind: type[R], data: Any, path: Path) -> R:
    try:
        return kind.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise DataError(f"not a {kind.__name__} record: {err['msg']}", source=str(path), field=field or None) from None


def read_curation(path: Path) -> CurationSummary | FilterReport:
    """A curation record: its `kind`, or (files written before records had one) its file name says which."""
    data = read_json(path)
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "filter_report" or (kind is None and path.name.endswith(FILTER_REPORT_NAME)):
        return _validate(FilterReport, data, path)
    if kind == "curation_summary" or (kind is None and path.name.endswith(CURATION_SUMMARY_SUFFIX)):
        return _validate(CurationSummary, data, path)
    raise DataError(f"not a curation record: expected a distill/best-of-k summary (*{CURATION_SUMMARY_SUFFIX}) or "
                    f"a filter report ({FILTER_REPORT_NAME})", source=str(path))


def read_metrics_log(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl: one JSON object per logged optimizer step (loss, learning rate, tokens/s, ...). A last line cut
    short (no newline: the run was killed while writing it) is left out, as resuming the run would."""
    text = _read_utf8(path)
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
    rows = []
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DataError("not valid JSON", source=str(path), record=f"line {i}") from None
            if not isinstance(row, dict):
                raise DataError("expected a JSON object", source=str(path), record=f"line {i}")
            _check_metric_numbers(row, path, i)
            rows.append(row)
    return rows


METRIC_NUMBERS = ("step", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_seen", "trained_tokens_seen",
                  "tokens_per_s", "elapsed_s", "rss_mb", "gpu_peak_mb")  # what reports compute and plot with


def _check_metric_numbers(row: dict[str, Any], path: Path, line: int) -> None:
    """A hand-edited or damaged row (`"step": "x"`) is a DataError naming the field, not a TypeError in the report."""
    for key in METRIC_NUMBERS:
        value = row.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataError(f"expected a number, got {json.dumps(value)}", source=str(path), record=f"line {line}",
                            field=key)


def write_record(path: Path, record: Record) -> Path:
    """Write a record atomically (sftlab.data.writers), with the current schema version."""
    from sftlab.data.writers import write_json

    write_json(path, record.to_dict())
    return path
