"""Which stages are done: each stage folder holds stage.json with the key of what made it (its own config, the keys
of the stages it reads, the content of the files it reads). Same key and done: skip. Same key, not done: resume.
Another key: the folder (sftlab's own, by its marker) is cleared and the stage runs again."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftlab.data.writers import write_json
from sftlab.fsutil import remove_owned_folder, write_marker
from sftlab.kvstore import stable_key
from sftlab.recipe.spec import references

STAGE_KIND = "recipe-stage"
STATE = "stage.json"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _input_files(value: Any) -> list[Path]:
    """Local files a stage's config names (a data path, a prompt file): their content is part of its key."""
    if isinstance(value, str):
        try:
            return [Path(value)] if "\n" not in value and Path(value).is_file() else []
        except OSError:  # a prompt, not a path (e.g. longer than a file name may be)
            return []
    if isinstance(value, dict):
        return [p for v in value.values() for p in _input_files(v)]
    if isinstance(value, list | tuple):
        return [p for v in value for p in _input_files(v)]
    return []


def stage_refs(spec: dict[str, Any]) -> set[str]:
    """The earlier stages a stage reads: its `${id}` references, the models it evaluates."""
    return references(spec) | set(spec.get("models", [])) | {x for p in spec.get("head_to_head", []) for x in p}


def stage_key(spec: dict[str, Any], resolved: dict[str, Any], upstream: dict[str, str], quick: bool,
              seed: int) -> str:
    """The key of a stage: its config as written, the keys of the stages it refers to, the content of the files
    its resolved config names (data sources, another run's outputs)."""
    refs = sorted(stage_refs(spec))
    files = {str(p): _file_digest(p) for p in _input_files(resolved)}
    return stable_key(spec, {r: upstream[r] for r in refs}, files, quick, seed)


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
