"""Readers: yield (location, raw record) pairs from files, Hugging Face datasets and SQL databases.

`location` is what an error message shows: "line 17" for JSONL/CSV, "record 4" elsewhere.
Readers stream where the format allows so a large pool never has to fit in memory twice.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sftlab.errors import DataError

# A record that could not even be parsed is yielded as its DataError so that on_error=skip can go on.
Record = tuple[str, "dict[str, Any] | DataError"]
FILE_TYPES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


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
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:  # yielded, not raised: on_error=skip reads on
                yield f"line {n}", DataError(f"invalid JSON ({e.msg} at column {e.colno})", reason="invalid JSON")
                continue
            if not isinstance(rec, dict):
                rec = DataError(f"expected a JSON object, got {type(rec).__name__}", reason="wrong type")
            yield f"line {n}", rec


def read_json(path: str) -> Iterator[Record]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})", source=path,
                            reason="invalid JSON") from None
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
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for rec in reader:
            yield f"line {reader.line_num}", dict(rec)


def read_parquet(path: str, batch_size: int = 4096) -> Iterator[Record]:
    import pyarrow.parquet as pq

    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        for rec in batch.to_pylist():
            yield f"record {i}", rec
            i += 1


def read_hf(path_or_id: str, split: str | None = None) -> Iterator[Record]:
    """A dataset saved with `save_to_disk`, or a hub id (needs network access)."""
    import datasets

    if Path(path_or_id).exists():
        ds = datasets.load_from_disk(path_or_id)
    else:
        ds = datasets.load_dataset(path_or_id, split=split or "train")
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) != 1:
            raise DataError(f"dataset has splits {list(ds)}; set `split:`", source=path_or_id, reason="no split")
        ds = ds[split or next(iter(ds))]
    for i, rec in enumerate(ds):
        yield f"record {i}", rec


def read_sql(url: str, query: str) -> Iterator[Record]:
    """Rows of `query` over any SQLAlchemy URL; a bare path means a SQLite file."""
    import sqlalchemy as sa

    if "://" not in url:
        if not Path(url).exists():
            raise DataError("SQLite file not found", source=url, reason="missing source")
        url = f"sqlite:///{Path(url).resolve()}"
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(sa.text(query))
            for i, row in enumerate(result.mappings()):
                yield f"row {i}", dict(row)
    except sa.exc.SQLAlchemyError as e:
        raise DataError(f"SQL query failed: {e.__class__.__name__}: {str(e).splitlines()[0]}",
                        source=_redact(url), reason="sql error") from None
    finally:
        engine.dispose()


def _redact(url: str) -> str:
    """Never print a password that came in a database URL."""
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database url>"


def read_records(path: str | None = None, *, type: str | None = None, split: str | None = None,
                 query: str | None = None) -> Iterator[Record]:
    """Dispatch on `type` (inferred from the path when not given)."""
    if type == "sql" or query is not None:
        if not path or not query:
            raise DataError("a SQL source needs both `path` (database URL or SQLite file) and `query`",
                            reason="missing field")
        yield from read_sql(path, query)
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
