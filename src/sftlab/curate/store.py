"""Resumable output and a generation cache: the two things that make long curation jobs crash-safe.

`ResumableJsonl` appends one JSON line per finished prompt and fsyncs it, so a `kill -9` loses at most the
prompt in flight; on restart it reads the keys already written (dropping a torn last line) and the pipeline
skips them: no lost and no duplicated records. `GenerationCache` (SQLite) keys replies by (model, prompt,
sampling params, seed), so re-running with the same settings never pays for a generation twice; it lives in
`sftlab.generation.cache` because evaluation shares it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sftlab.generation.cache import GenerationCache, stable_key

__all__ = ["GenerationCache", "ResumableJsonl", "stable_key"]


class ResumableJsonl:
    def __init__(self, path: str | Path, key_field: str = "key") -> None:
        self.path, self.key_field = Path(path), key_field
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        self.records = 0
        self._recover()
        side = self.path.with_suffix(self.path.suffix + ".done")  # prompts that produced no record
        if side.exists():
            self.done.update(x for x in side.read_text().splitlines() if x)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held open for the whole run)

    def _recover(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        good = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn write from a crash: drop it, that prompt is redone
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            self.done.add(rec["meta"][self.key_field] if "meta" in rec else rec[self.key_field])
            self.records += 1
            good += len(line)
        if good != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def write_group(self, key: str, records: list[dict[str, Any]]) -> None:
        """All records of one prompt, then fsync: a prompt is either fully written or not at all."""
        for rec in records:
            self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.add(key)
        self.records += len(records)

    def mark_done(self, key: str) -> None:
        """A prompt that produced no record (e.g. no acceptable sample) is remembered in a side file."""
        with open(self.path.with_suffix(self.path.suffix + ".done"), "a", encoding="utf-8") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done.add(key)

    def close(self) -> None:
        self._f.close()
