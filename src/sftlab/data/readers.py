"""Readers: yield (location, raw record) pairs from files, Hugging Face datasets and SQL databases (`data.sql`).

`location` is what an error message shows: "line 17" for JSONL/CSV, "record 4" elsewhere.
Readers stream where the format allows so a large pool never has to fit in memory twice.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from sftlab.errors import DataError
from sftlab.textutil import not_utf8

# A record that could not even be parsed is yielded as its DataError so that on_error=skip can go on.
Record = tuple[str, "dict[str, Any] | DataError"]
FILE_TYPES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
MAX_CSV_FIELD = 64 * 1024 * 1024  # generous: a long document in one cell reads; a runaway field still stops
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of bytes that are not UTF-8


def parse_json(text: str | bytes) -> Any:
    """json.loads whose every failure is a DataError: bad syntax, absurd nesting, integers too long to convert."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno}, column {e.colno}" if e.lineno > 1 else f"column {e.colno}"
        raise DataError(f"invalid JSON ({e.msg} at {where})", reason="invalid JSON") from None
    except RecursionError:
        raise DataError("JSON nested too deep to read (more levels than Python can follow)",
                        reason="nested too deep") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise DataError(f"invalid JSON ({e})", reason="invalid JSON") from None


@contextmanager
def _open_binary(path: str) -> Iterator[BinaryIO]:
    """Open for reading; a path that cannot be read (a folder, no permission) is a DataError naming it."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise DataError(f"cannot read the file ({e.strerror or e})", source=path, reason="unreadable source") from None
    with f:
        yield f


def _raw_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """Numbered lines as bytes (split like universal newlines, ends kept), the UTF-8 byte order mark dropped.

    Decoding line by line means one bad byte costs one line, not the whole file.
    """
    with _open_binary(path) as f:
        n = 0
        for chunk in f:
            for raw in chunk.splitlines(keepends=True):
                n += 1
                yield n, raw[len(codecs.BOM_UTF8):] if n == 1 and raw.startswith(codecs.BOM_UTF8) else raw


def infer_type(path: str) -> str:
    """jsonl | json | csv | parquet | hf (a `save_to_disk` folder) from a path."""
    p = Path(path)
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists():
            return "hf"
        raise DataError("is a folder but not a Hugging Face dataset saved with save_to_disk", source=path,
                        reason="unknown source type")
    suffix = p.suffix.lower()
    if suffix not in FILE_TYPES:
        raise DataError(f"cannot tell the file type from '{suffix}' (expected one of {', '.join(FILE_TYPES)}); "
                        "set `type:` explicitly", source=path, reason="unknown source type")
    return FILE_TYPES[suffix]


def read_jsonl(path: str) -> Iterator[Record]:
    for n, raw in _raw_lines(path):
        if not raw.strip():
            continue
        try:  # a bad line is yielded, not raised: on_error=skip reads on
            rec = parse_json(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            rec = DataError(not_utf8(raw, e)[0], reason="not UTF-8")
        except DataError as e:
            rec = e
        if not isinstance(rec, dict | DataError):
            rec = DataError(f"expected a JSON object, got {type(rec).__name__}", reason="wrong type")
        yield f"line {n}", rec


def read_json(path: str) -> Iterator[Record]:
    with _open_binary(path) as f:
        raw = f.read()
    raw = raw[len(codecs.BOM_UTF8):] if raw.startswith(codecs.BOM_UTF8) else raw
    try:
        data = parse_json(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        message, line = not_utf8(raw, e)
        raise DataError(message, source=path, record=f"line {line}", reason="not UTF-8") from None
    except DataError as e:
        raise DataError(e.message, source=path, reason=e.reason) from None
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError("expected a JSON list of records (or an object holding exactly one list)",
                            source=path, reason="wrong type")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list of records, got {type(data).__name__}", source=path,
                        reason="wrong type")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            rec = DataError(f"expected an object, got {type(rec).__name__}", reason="wrong type")
        yield f"record {i}", rec


def read_csv(path: str) -> Iterator[Record]:
    """Rows as dicts; strict quoting, so that one stray quote cannot swallow the rest of the file into a cell."""
    csv.field_size_limit(MAX_CSV_FIELD)
    lines = (raw.decode("utf-8", errors="surrogateescape") for _, raw in _raw_lines(path))
    reader = csv.DictReader(lines, strict=True)
    fieldnames = _csv_step(lambda: reader.fieldnames, reader, path) or []  # reads the header
    _check_header(fieldnames, path)
    while True:
        try:
            rec = _csv_step(lambda: next(reader), reader, path)
        except StopIteration:
            return
        yield f"line {reader.line_num}", _check_row(rec, len(fieldnames))


def _csv_step(step: Callable[[], Any], reader: csv.DictReader, path: str) -> Any:
    """One parse step; a csv.Error becomes a DataError naming the line where the failing record starts."""
    start = reader.line_num + 1
    try:
        return step()
    except csv.Error as e:
        raise DataError(_csv_error_message(e), source=path, record=f"line {start}", reason="invalid CSV") from None


def _csv_error_message(e: csv.Error) -> str:
    text = str(e)
    if "field larger than field limit" in text:
        return f"a field is larger than {MAX_CSV_FIELD // 2**20} MiB, the most sftlab reads from one CSV cell"
    if "unexpected end of data" in text:
        return "a quoted field in the record starting here is never closed (a stray '\"'?)"
    return f"invalid CSV ({text})"


def _check_header(fieldnames: list[str], path: str) -> None:
    """A header must be text and name each column once (a repeated name would silently drop a column)."""
    for name in fieldnames:
        if _UNDECODABLE.search(name):
            raise DataError("the header is not valid UTF-8; save the file as UTF-8", source=path, record="line 1",
                            reason="not UTF-8")
        if fieldnames.count(name) > 1:
            raise DataError(f"the header names column '{name}' twice", source=path, record="line 1",
                            reason="invalid CSV")


def _check_row(rec: dict[str | None, Any], width: int) -> dict[str, Any] | DataError:
    """csv.DictReader files extra cells under None and fills missing ones with None: both are errors here."""
    extra = rec.pop(None, None)
    if extra is not None or any(v is None for v in rec.values()):
        cells = width + len(extra) if extra is not None else sum(v is not None for v in rec.values())
        return DataError(f"the row has {cells} fields, the header has {width}", reason="wrong field count")
    if any(_UNDECODABLE.search(v) for v in rec.values()):
        return DataError("not valid UTF-8; save the file as UTF-8", reason="not UTF-8")
    return rec


def read_parquet(path: str, batch_size: int = 4096) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    i = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            for rec in batch.to_pylist():
                yield f"record {i}", rec
                i += 1
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"not a readable Parquet file ({first_line(e)})", source=path,
                        record=f"record {i}" if i else None, reason="invalid Parquet") from None


def first_line(e: BaseException) -> str:
    """An exception's first line: library errors can run to pages, a message to the user is one line."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_hf(path_or_id: str, split: str | None = None) -> Iterator[Record]:
    """A dataset saved with `save_to_disk`, or a hub id (needs network access)."""
    import datasets

    try:  # datasets raises many kinds of errors for a broken folder or an unreachable hub id; each is named
        if Path(path_or_id).exists():
            ds = datasets.load_from_disk(path_or_id)
        else:
            ds = datasets.load_dataset(path_or_id, split=split or "train")
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot load the dataset ({type(e).__name__}: {first_line(e)})", source=path_or_id,
                        reason="unreadable source") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) != 1:
            raise DataError(f"dataset has splits {list(ds)}; set `split:`", source=path_or_id, reason="no split")
        if split is not None and split not in ds:
            raise DataError(f"dataset has no split '{split}' (it has {list(ds)})", source=path_or_id,
                            reason="no split")
        ds = ds[split or next(iter(ds))]
    for i, rec in enumerate(ds):
        yield f"record {i}", rec


def _read_sql_source(path: str | None, query: str | None) -> Iterator[Record]:
    """A database URL given without a query (`data check sqlite:///pool.db`) is told how to pass one, not sent
    looking for a file of that name."""
    from sftlab.data.sql import read_sql, source_name

    if not path:
        raise DataError("a SQL source needs `path` (database URL or SQLite file)", reason="missing field")
    if not query:
        raise DataError("a SQL source needs a query: pass --query 'SELECT ...' (`query:` in a data spec)",
                        source=source_name(path, "sql"), field="query", reason="missing field")
    yield from read_sql(path, query)


def read_records(path: str | None = None, *, type: str | None = None, split: str | None = None,
                 query: str | None = None) -> Iterator[Record]:
    """Dispatch on `type` (inferred from the path when not given)."""
    from sftlab.data.sql import is_sql_source

    if is_sql_source(path, type, query):
        yield from _read_sql_source(path, query)
        return
    if path is None:
        raise DataError("no data path given", reason="missing source")
    if type != "hf" and not Path(path).exists():
        raise DataError("file not found", source=path, reason="missing source")
    kind = type or infer_type(path)
    readers = {"jsonl": read_jsonl, "json": read_json, "csv": read_csv, "parquet": read_parquet}
    if kind == "hf":
        yield from read_hf(path, split)
    elif kind in readers:
        yield from readers[kind](path)
    else:
        raise DataError(f"unknown source type '{kind}' (expected jsonl, json, csv, parquet, hf or sql)",
                        source=path, reason="unknown source type")
