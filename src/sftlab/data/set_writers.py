"""A conversation set written as JSONL, Parquet or a Hugging Face dataset folder (`save_to_disk`), so curated and
converted data goes straight into pandas, DuckDB, `datasets` or the Hub; each reads back through `DataSpec`.

Parquet and Arrow need one schema for every row: `messages` is a list of `{role, content}` structs (plus `weight`,
`name` and OpenAI-style `tool_calls` with `arguments` as JSON text, each only when some turn uses it); `tools`,
`meta` and any other free-form field are JSON text, since their shapes differ from record to record.
Writes are atomic: a file goes through a temp sibling and one rename, a dataset folder is built in a staging
folder beside it and replaces an existing folder only when that folder is an earlier sftlab dataset output.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sftlab.data.schema import Conversation
from sftlab.data.writers import atomic_open, refuse_to_clobber, write_jsonl
from sftlab.errors import ConfigError
from sftlab.fsutil import check_folder_output, replace_folder, staging_folder, write_marker

OUTPUT_FORMATS = ("jsonl", "parquet", "hf")
DATASET_KIND = "dataset"  # the sftlab-run.json kind of a dataset folder sftlab wrote


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """The format asked for, or the one the path implies (`.parquet`: Parquet; anything else: JSONL)."""
    if fmt in (None, "", "auto"):
        return "parquet" if Path(path).suffix.lower() == ".parquet" else "jsonl"
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"output format '{fmt}': expected auto, {', '.join(OUTPUT_FORMATS)}")
    return fmt


def check_set_output(path: str | Path, fmt: str, *, inputs: Iterable[str | Path] = (), overwrite: bool = False,
                     not_ours: str = "") -> None:
    """Refuse, before any work, an output that would lose something: an input, someone else's file or folder."""
    path = Path(path)
    if fmt != "hf":
        refuse_to_clobber(path, inputs=inputs, overwrite=overwrite, not_ours=not_ours)
        return
    check_folder_output(path, DATASET_KIND, overwrite, inputs, what="a Hugging Face dataset",
                        earlier="an earlier dataset written by sftlab")


def write_conversations(path: str | Path, rows: Iterable[dict[str, Any] | Conversation], fmt: str | None = None,
                        keep: Iterable[str | Path] = ()) -> int:
    """Write the set in `fmt` (see output_format); returns the number of records. `keep`: inputs never removed."""
    fmt = output_format(path, fmt)
    if fmt == "jsonl":
        return write_jsonl(path, rows)  # streams: a large set never has to fit in memory as a table
    records = [r.to_dict() if isinstance(r, Conversation) else r for r in rows]
    table = conversations_table(records)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with atomic_open(path, "wb") as f:
            pq.write_table(table, f)
    else:
        _save_dataset(Path(path), table, keep)
    return len(records)


def _save_dataset(path: Path, table, keep: Iterable[str | Path]) -> None:
    """`save_to_disk` into a staging folder beside `path`, marked as sftlab's, then moved into place."""
    import datasets

    staged = staging_folder(path)
    try:
        datasets.Dataset(datasets.table.InMemoryTable(table)).save_to_disk(str(staged))
        write_marker(staged, DATASET_KIND)
        replace_folder(staged, path, DATASET_KIND, keep)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # only left when something failed: our own temp folder


def conversations_table(records: list[dict[str, Any]]):
    """`messages` records as one Arrow table (see the module doc for the schema)."""
    import pyarrow as pa

    turns = [t for r in records for t in r.get("messages", [])]
    message = pa.struct(_turn_fields(turns))
    names = list(dict.fromkeys(k for r in records for k in r))
    columns: dict[str, Any] = {"id": pa.array([str(r.get("id", "")) for r in records], pa.string()),
                               "messages": pa.array([[_turn_row(t) for t in r.get("messages", [])] for r in records],
                                                    pa.list_(message))}
    for name in names:
        if name not in columns:
            columns[name] = pa.array([_json_text(r.get(name)) for r in records], pa.string())
    return pa.table(columns)


def _turn_fields(turns: list[dict[str, Any]]) -> list:
    """role and content always; weight, name and tool_calls only when some turn has them."""
    import pyarrow as pa

    call = pa.struct([("type", pa.string()), ("function", pa.struct([("name", pa.string()),
                                                                      ("arguments", pa.string())]))])
    optional = {"weight": pa.float64(), "name": pa.string(), "tool_calls": pa.list_(call)}
    return [("role", pa.string()), ("content", pa.string())] + [
        (key, kind) for key, kind in optional.items() if any(t.get(key) is not None for t in turns)]


def _turn_row(turn: dict[str, Any]) -> dict[str, Any]:
    """One turn for the Arrow struct: tool call arguments as JSON text, the way the OpenAI API sends them."""
    row = dict(turn)
    if row.get("tool_calls"):
        row["tool_calls"] = [{"type": c.get("type", "function"),
                              "function": {"name": c["function"]["name"],
                                           "arguments": _json_text(c["function"].get("arguments"))}}
                             for c in row["tool_calls"]]
    return row


def _json_text(value: Any) -> str | None:
    """A free-form value as JSON text (None stays null; text stays as it is)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)
