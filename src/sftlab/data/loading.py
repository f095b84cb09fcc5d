"""Turn a data source spec into validated conversations, with a report of every skipped record."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sftlab.data.formats import ADAPTERS, FORMATS, detect_format
from sftlab.data.readers import read_records
from sftlab.data.schema import Conversation, Turn
from sftlab.data.sql import source_name
from sftlab.data.validate import validate_conversation
from sftlab.errors import DataError
from sftlab.yamlconfig import validated


class DataSpec(BaseModel):
    """Where a dataset comes from and how to read it."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="File, `save_to_disk` folder, hub id (type: hf), or database URL (type: sql).")
    type: Literal["jsonl", "json", "csv", "parquet", "hf", "sql"] | None = Field(
        None, description="Source type; inferred from the path when omitted.")
    format: Literal["auto", "messages", "prompt_completion", "alpaca", "sharegpt", "question_answer"] = Field(
        "auto", description="Record format; detected from each record's keys when 'auto'.")
    query: str | None = Field(None, description="SQL query (type: sql).")
    split: str | None = Field(None, description="Split of a Hugging Face dataset.")
    max_records: int | None = Field(None, ge=1, description="Read at most this many valid records.")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="raise: stop at the first bad record; skip: count and report each skipped one.")
    substitutions: dict[str, str] = Field(
        default_factory=dict, description="Replace `{{key}}` placeholders in every turn (e.g. name, author).")
    system_prompt: str | None = Field(None, description="Add this system turn where a record has none.")
    require_response: bool = Field(True, description="False for prompt sets (curation): records may end with "
                                                     "a user turn and need no assistant reply.")
    allow_empty: bool = Field(False, description="Accept a source without a single record (by default an empty "
                                                 "file or query result is an error: usually a wrong path or query).")


def make_spec(spec: DataSpec | dict[str, Any] | str, source: str = "data source") -> DataSpec:
    """A DataSpec from a path or a mapping; a bad value is a ConfigError naming the field and what it accepts."""
    if isinstance(spec, DataSpec):
        return spec
    return validated(DataSpec, {"path": spec} if isinstance(spec, str) else spec, source)


@dataclass
class LoadReport:
    """What happened to every record of one source."""

    source: str
    read: int = 0
    loaded: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # first skip messages, for the user to look at
    format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "format": self.format, "read": self.read, "loaded": self.loaded,
                "skipped": dict(self.skipped), "skipped_total": sum(self.skipped.values()),
                "skip_examples": self.examples}


def require_records(report: LoadReport) -> None:
    """Refuse a source where every record was skipped: writing or training on nothing is never what was meant."""
    if report.read and not report.loaded:
        reasons = ", ".join(f"{r}: {n}" for r, n in report.skipped.most_common())
        first = f"; first: {report.examples[0]}" if report.examples else ""
        raise DataError(f"0 of {report.read} records are valid (skipped: {reasons}){first}", source=report.source,
                        reason="no valid records")


def record_id(source: str, location: str, rec: dict[str, Any]) -> str:
    """A stable id: the record's own `id` when present, else a hash of its source and content."""
    if isinstance(rec.get("id"), str | int) and str(rec["id"]):
        return str(rec["id"])
    blob = json.dumps(rec, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(f"{source}\0{blob}".encode()).hexdigest()[:16]


def _substitute(conv: Conversation, subs: dict[str, str]) -> None:
    for t in conv.turns:
        for key, value in subs.items():
            t.content = t.content.replace("{{" + key + "}}", value)


def _detect_format(rec: dict[str, Any]) -> str:
    fmt = detect_format(rec)
    if fmt is None:
        raise DataError(f"cannot detect the record format from keys {sorted(rec)}; set `format:` "
                        f"to one of {', '.join(FORMATS)}", reason="unknown format")
    return fmt


def _to_conversation(rec: dict[str, Any], fmt: str, spec: DataSpec) -> Conversation:
    """Adapt, complete (system prompt, substitutions) and validate one raw record."""
    conv = ADAPTERS[fmt](rec)
    if spec.system_prompt and conv.turns and conv.turns[0].role != "system":
        conv.turns.insert(0, Turn("system", spec.system_prompt))
    _substitute(conv, spec.substitutions)
    validate_conversation(conv, spec.require_response)
    return conv


def _located(e: DataError | RecursionError, source: str, location: str) -> DataError:
    """The error with its source and record filled in; a structure too deep for Python to walk is one too."""
    if isinstance(e, RecursionError):
        return DataError("record nested too deep to read", source=source, record=location, reason="nested too deep")
    return DataError(e.message, source=source, record=location, field=e.field, reason=e.reason)


def load_conversations(spec: DataSpec | dict[str, Any] | str) -> tuple[list[Conversation], LoadReport]:
    """Read, adapt and validate every record of `spec`.

    With on_error="raise" the first bad record raises a DataError naming source, record and field;
    with "skip" each bad record is counted under its reason in the returned report.
    """
    spec = make_spec(spec)
    report = LoadReport(source=source_name(spec.path, spec.type, spec.query))
    return list(iter_conversations(spec, report)), report


def iter_conversations(spec: DataSpec, report: LoadReport) -> Iterator[Conversation]:
    """`load_conversations` one record at a time (a large pool need not fit in memory); counts go to `report`."""
    shown = report.source
    fixed = None if spec.format == "auto" else spec.format
    formats: dict[str, str] = {}  # detected per record: the first record (say, an empty one) does not decide all
    previous = None
    for location, rec in read_records(spec.path, type=spec.type, split=spec.split, query=spec.query):
        report.read += 1
        try:
            if isinstance(rec, DataError):
                raise rec
            # a record that matches no format is read as the one before, whose adapter names its missing field
            fmt = fixed or detect_format(rec) or previous or _detect_format(rec)
            conv = _to_conversation(rec, fmt, spec)
            formats[fmt] = previous = fmt
            conv.id = record_id(shown, location, rec)
        except (DataError, RecursionError) as e:
            err = _located(e, shown, location)
            if spec.on_error == "raise":
                raise err from None
            report.skipped[err.reason] += 1
            if len(report.examples) < 20:
                report.examples.append(str(err))
            continue
        conv.meta.setdefault("source", shown)
        conv.meta.setdefault("location", location)
        report.loaded += 1
        yield conv
        if spec.max_records and report.loaded >= spec.max_records:
            break
    if report.read == 0 and not spec.allow_empty:
        raise DataError("no records: the source is empty (or holds only blank lines / a header); check the path "
                        "or query, or set allow_empty: true (--allow-empty) if that is intended", source=shown,
                        reason="empty source")
    report.format = fixed or "+".join(formats) or None
