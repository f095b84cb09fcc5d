"""Resumable output and a generation cache: the two things that make long curation jobs crash-safe.

`ResumableJsonl` appends all records of one finished prompt as one group and fsyncs them, so a `kill -9` loses
at most the prompt in flight. It only ever appends to a file it created itself: a sidecar manifest
(`OUT.manifest.json`, written before the first record) holds the run's settings, and every record carries the
settings' fingerprint (`meta.run`), its prompt key (`meta.key`) and its place in its group (`meta.group_index`,
`meta.group_size`). On restart it checks that the file is its own and the settings are the same, drops a torn or
incomplete trailing group, and the pipeline skips the finished prompts: no lost, partial or duplicated group.
Any other existing file, a folder, or an input given as the output is refused before anything is written
(`sftlab.curate.outputs`).
`GenerationCache` (SQLite) keys replies by (model, prompt, sampling params, seed), so re-running with the same
settings never pays for a generation twice; it lives in `sftlab.generation.cache` because evaluation shares it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

from sftlab.curate.outputs import MANIFEST_FORMAT, CurationFiles, normalised, write_failed
from sftlab.data.writers import write_json
from sftlab.errors import ConfigError
from sftlab.fsutil import OutputLock
from sftlab.kvstore import stable_key

__all__ = ["CurationFiles", "ResumableJsonl", "run_fingerprint"]

_KEY_LINE = re.compile(rb"\S{1,200}")


def run_fingerprint(settings: dict[str, Any]) -> str:
    """One short id for everything that changes the output; every record carries it."""
    return stable_key("sftlab-curation", normalised(settings))


def _complete_lines(raw: bytes) -> list[bytes]:
    """The newline-terminated lines; a torn rest is left out. Only b"\\n" ends a line (JSON never holds a raw one)."""
    return [line + b"\n" for line in raw.split(b"\n")[:-1]]


class ResumableJsonl:
    """Append-only JSONL of record groups (one group per prompt), resumable after a crash; see the module doc."""

    def __init__(self, path: str | Path, settings: dict[str, Any] | None = None,
                 inputs: Iterable[str | Path] = ()) -> None:
        self.files = CurationFiles(Path(path))
        self.path = self.files.out
        self.settings = normalised(settings)
        self.fingerprint = run_fingerprint(self.settings)
        self._lock = OutputLock(self.path).acquire()  # a second run onto this --out would interleave its groups
        try:
            self.files.check(self.settings, inputs)
            self._open_resumed()
        except BaseException:
            self._lock.release()
            raise

    def _open_resumed(self) -> None:
        """Recover what an earlier run of these settings wrote, or claim the new file; open it for appending."""
        self.done: set[str] = set()
        self.records = 0
        manifest = self.files.read_manifest()
        if manifest is not None and manifest["settings"] == self.settings:
            self._recover()
            self._recover_done()
        else:  # new or empty (check() refused anything else): claim it under our settings
            self._write_manifest()
        self._fd = self._open(self.path)
        self._done_fd: int | None = None

    # recovery -------------------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Keep every complete group, drop a torn line or an incomplete trailing group; refuse foreign lines."""
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        good = pos = 0
        group: list[dict[str, Any]] = []
        for number, line in enumerate(_complete_lines(raw), 1):  # a torn last line from a crash is dropped
            meta = self._own_meta(line, number)
            start, pos = pos, pos + len(line)
            if group and (meta["key"] != group[0]["key"] or meta["group_index"] == 0):
                self._finish(group)  # an earlier group cut short by hand: its prompt counts as done
                group, good = [], start
            group.append(meta)
            if meta["group_index"] == meta["group_size"] - 1 and len(group) == meta["group_size"]:
                self._finish(group)
                group, good = [], pos
        if good != len(raw):
            self._truncate(self.path, good)

    def _own_meta(self, line: bytes, number: int) -> dict[str, Any]:
        """The provenance of a line this run wrote; anything else means the file is not ours."""
        try:
            meta = json.loads(line).get("meta")
        except (ValueError, AttributeError, RecursionError):
            meta = None
        ok = (isinstance(meta, dict) and meta.get("run") == self.fingerprint and isinstance(meta.get("key"), str)
              and isinstance(meta.get("group_size"), int) and isinstance(meta.get("group_index"), int)
              and 0 <= meta["group_index"] < meta["group_size"])
        if not ok:
            raise ConfigError(f"{self.path}, line {number}: not a record written by this curation run (meta.run "
                              f"{self.fingerprint}); refusing to append to a file that was changed: "
                              "choose a new --out")
        return meta

    def _finish(self, group: list[dict[str, Any]]) -> None:
        """A prompt whose records are on disk: skipped on resume."""
        self.done.add(group[0]["key"])
        self.records += len(group)

    def _recover_done(self) -> None:
        """Keys of prompts that produced no record, one a line; a torn last line is dropped."""
        if not self.files.done.exists():
            return
        raw = self.files.done.read_bytes()
        good = 0
        for number, line in enumerate(_complete_lines(raw), 1):
            if not _KEY_LINE.fullmatch(line.strip()):
                raise ConfigError(f"{self.files.done}, line {number}: not a prompt key written by sftlab curate; "
                                  "refusing to touch it: choose a new --out")
            self.done.add(line.strip().decode())
            good += len(line)
        if good != len(raw):
            self._truncate(self.files.done, good)

    # writing --------------------------------------------------------------------------------------------------

    def _write_manifest(self) -> None:
        """Claim the output under our settings (atomically, before any record)."""
        try:
            write_json(self.files.manifest, {"format": MANIFEST_FORMAT, "output": self.path.name,
                                             "fingerprint": self.fingerprint, "settings": self.settings})
        except OSError as e:
            raise write_failed(e, self.files.manifest, self.path, 0) from e

    def _open(self, path: Path) -> int:
        """An append-only descriptor: every write lands at the end, after what recovery kept."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as e:
            raise write_failed(e, path, self.path, self.records) from e

    def _truncate(self, path: Path, size: int) -> None:
        """Cut a file we own back to its last whole group (only ever called after ownership was checked)."""
        if path.exists() and path.stat().st_size != size:
            with open(path, "r+b") as f:
                f.truncate(size)
                os.fsync(f.fileno())

    def _append(self, fd: int, path: Path, blob: bytes) -> None:
        """Write all of `blob` and fsync, or leave the file as it was (best effort) and say what failed."""
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            with suppress(OSError):
                os.ftruncate(fd, start)
                os.fsync(fd)
            raise write_failed(e, path, self.path, self.records) from e

    def stamp(self, key: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Mark each record as this run's, with its prompt key and its place in the group."""
        for i, rec in enumerate(records):
            rec["meta"] = {**rec.get("meta", {}), "key": key, "run": self.fingerprint, "group_index": i,
                           "group_size": len(records)}
        return records

    def write_group(self, key: str, records: list[dict[str, Any]]) -> None:
        """All records of one prompt, then fsync; recovery drops a group that did not fully reach the disk."""
        blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.stamp(key, records)).encode()
        self._append(self._fd, self.path, blob)
        self.done.add(key)
        self.records += len(records)

    def mark_done(self, key: str) -> None:
        """A prompt that produced no record (e.g. no acceptable sample) is remembered in a side file."""
        if self._done_fd is None:
            self._done_fd = self._open(self.files.done)
        self._append(self._done_fd, self.files.done, (key + "\n").encode())
        self.done.add(key)

    def close(self) -> None:
        for fd in (self._fd, self._done_fd):
            if fd is not None:
                with suppress(OSError):
                    os.close(fd)
        self._fd = self._done_fd = None  # type: ignore[assignment]
        self._lock.release()
