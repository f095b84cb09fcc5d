"""Which checkpoint a resumed run can trust: the newest one whose save completed.

Trainer writes a checkpoint's weights, optimizer, scheduler and RNG state first and trainer_state.json last, so a
kill (or a full disk) during a save leaves a folder without a valid trainer_state.json; a file damaged later is
caught by checking that every weight/state file is whole (safetensors: header and data length; torch.save files:
a zip archive with its central directory, which is written last)."""

from __future__ import annotations

import json
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# DeepSpeed keeps the optimizer state (and, under ZeRO-3, the weights) in the checkpoint's global_step<N>/ folder
REQUIRED = {"optimizer": ("optimizer*", "global_step*/*optim_states.pt"), "scheduler": ("scheduler.pt",),
            "RNG state": ("rng_state*.pth",)}
WEIGHTS = ("adapter_model", "model", "pytorch_model", "global_step")


@dataclass
class ResumePoint:
    """The checkpoint to resume from (None: start at step 0), its step, and the newer ones skipped, with why."""

    path: Path | None = None
    step: int = 0
    trainer_state: dict = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def find_resume_point(folder: str | Path) -> ResumePoint:
    """The newest complete checkpoint-N under `folder`, skipping (and reporting) incomplete newer ones."""
    folder = Path(folder)
    found = sorted(((int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name)))
                   if folder.is_dir() else [], reverse=True)
    point = ResumePoint()
    for step, path in found:
        state, problem = _load_state(path, step)
        problem = problem or checkpoint_problem(path)
        if problem is None:
            point.path, point.step, point.trainer_state = path, step, state
            return point
        point.skipped.append((path, problem))
    return point


def _load_state(path: Path, step: int) -> tuple[dict, str | None]:
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        return {}, "no trainer_state.json (the save did not finish)"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return {}, f"trainer_state.json is unreadable ({e})"
    if not isinstance(state, dict) or state.get("global_step") != step:
        return {}, f"trainer_state.json does not describe step {step}"
    return state, None


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint folder `path` cannot be resumed from (None: it can)."""
    names = [p.name for p in path.iterdir()]
    if not any(n.startswith(WEIGHTS) for n in names):
        return "no model weights"
    for what, patterns in REQUIRED.items():
        if not any(list(path.glob(pattern)) for pattern in patterns):
            return f"no {what} file ({' or '.join(patterns)})"
    for p in sorted(path.iterdir()):
        problem = _file_problem(p) if p.is_file() else None
        if problem:
            return f"{p.name} {problem}"
    return None


def _file_problem(path: Path) -> str | None:
    """Whether a file of a checkpoint is whole (formats sftlab can check cheaply, without loading them)."""
    size = path.stat().st_size
    if size == 0:
        return "is empty"
    if path.suffix == ".safetensors":
        return _safetensors_problem(path, size)
    if path.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(path):
        return "is truncated or damaged (not a complete torch.save archive)"
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "is not valid JSON"
    return None


def _safetensors_problem(path: Path, size: int) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then exactly the bytes the header lists."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return "is truncated (header longer than the file)"
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return "is damaged (unreadable safetensors header)"
    if 8 + n + end != size:
        return f"is truncated ({size} bytes, the header describes {8 + n + end})"
    return None
