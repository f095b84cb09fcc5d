"""Which stages are done: each stage folder holds stage.json with the key of what made it (its own config, the keys
of the stages it reads, the content of the files it reads). Same key and done: skip. Same key, not done: resume.
Another key: the folder (sftlab's own, by its marker) is cleared and the stage runs again."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from sftlab.data.writers import write_json
from sftlab.fsutil import remove_owned_folder, write_marker
from sftlab.kvstore import stable_key
from sftlab.recipe.spec import references

STAGE_KIND = "recipe-stage"
STATE = "stage.json"
DATA_FIELDS = ("path", "data")  # where a folder is a data source (a folder of files, a saved dataset)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _folder_digest(folder: Path, content: bool) -> str:
    """A folder's files: by content (small folders), else by name, size and modification time (a model or dataset
    folder of gigabytes is not read on every run)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        h.update(f"{path.relative_to(folder)}\0{_file_digest(path) if content else (stat.st_size, stat.st_mtime_ns)}"
                 "\0".encode())
    return h.hexdigest()[:16]


@cache
def _shipped_digest() -> str:
    """The data sftlab ships: the built-in preparers and `${heldout:KIND}` read it, so a new version reruns them."""
    return _folder_digest(Path(str(files("sftlab") / "resources")), content=True)


def _reads_shipped(spec: dict[str, Any]) -> bool:
    return spec.get("type") == "prepare" or "${heldout:" in json.dumps(spec)


def _input_digests(value: Any) -> dict[str, str]:
    """Local files and folders a stage's resolved config names (a data path, a prompt file, a data folder): what
    they hold is part of its key."""
    return {str(p): _folder_digest(p, content=False) if p.is_dir() else _file_digest(p) for p in _input_files(value)}


def _input_files(value: Any, field: str = "") -> list[Path]:
    """Files anywhere, folders only as a data source (`path:`, `data:`): a "." elsewhere is not the whole folder."""
    if isinstance(value, str):
        try:
            path = Path(value)
            return [path] if "\n" not in value and (path.is_file() or (field in DATA_FIELDS and path.is_dir())) else []
        except OSError:  # a prompt, not a path (e.g. longer than a file name may be)
            return []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _input_files(v, k)]
    if isinstance(value, list | tuple):
        return [p for v in value for p in _input_files(v, field)]
    return []


def stage_refs(spec: dict[str, Any]) -> set[str]:
    """The earlier stages a stage reads: its `${id}` references, the models it evaluates."""
    return references(spec) | set(spec.get("models", [])) | {x for p in spec.get("head_to_head", []) for x in p}


def stage_key(spec: dict[str, Any], resolved: dict[str, Any], upstream: dict[str, str], quick: bool,
              seed: int) -> str:
    """The key of a stage: its config as written, the keys of the stages it refers to, what the files and folders
    its resolved config names hold (data sources, another run's outputs), the shipped data where it reads it."""
    refs = sorted(stage_refs(spec))
    shipped = [_shipped_digest()] if _reads_shipped(spec) else []
    return stable_key(spec, {r: upstream[r] for r in refs}, _input_digests(resolved), quick, seed, *shipped)


@dataclass
class StageState:
    key: str
    status: str  # running | done
    seconds: float = 0.0
    outputs: dict[str, Any] | None = None

    @classmethod
    def read(cls, folder: Path) -> StageState | None:
        try:
            data = json.loads((folder / STATE).read_text(encoding="utf-8"))
            return cls(data["key"], data["status"], data.get("seconds", 0.0), data.get("outputs"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, folder: Path) -> None:
        write_json(folder / STATE, {"key": self.key, "status": self.status, "seconds": round(self.seconds, 1),
                                    "outputs": self.outputs, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def claim_stage_folder(folder: Path, keep: list[Path]) -> None:
    """Start a stage afresh: an earlier folder of this stage is removed (only if sftlab's marker says it made it)."""
    if folder.exists():
        remove_owned_folder(folder, STAGE_KIND, keep)
    folder.mkdir(parents=True)
    write_marker(folder, STAGE_KIND)
