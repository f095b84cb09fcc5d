"""Resumable output and a generation cache: the two things that make long curation jobs crash-safe.

`ResumableJsonl` appends all records of one finished prompt as one group and fsyncs them, so a `kill -9` loses
at most the prompt in flight. It only ever appends to a file it created itself: a sidecar manifest
(`OUT.manifest.json`, written before the first record) holds the run's settings, and every record carries the
settings' fingerprint (`meta.run`), its prompt key (`meta.key`) and its place in its group (`meta.group_index`,
`meta.group_size`). On restart it checks that the file is its own and the settings are the same, drops a torn or
incomplete trailing group, and the pipeline skips the finished prompts: no lost, partial or duplicated group.
Any other existing file, a folder, or an input given as the output is refused before anything is written.
`GenerationCache` (SQLite) keys replies by (model, prompt, sampling params, seed), so re-running with the same
settings never pays for a generation twice; it lives in `sftlab.generation.cache` because evaluation shares it.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftlab.data.writers import refuse_to_clobber, write_json
from sftlab.errors import ConfigError, SftlabError
from sftlab.kvstore import stable_key

__all__ = ["CurationFiles", "ResumableJsonl", "check_selection_output", "run_fingerprint"]

MANIFEST_FORMAT = "sftlab-curation/1"
_KEY_LINE = re.compile(rb"\S{1,200}")
_SQLITE_HEADER = b"SQLite format 3\x00"


def normalised(settings: dict[str, Any] | None) -> dict[str, Any]:
    """Settings as they read back from JSON, so a stored manifest compares equal to a fresh one."""
    return json.loads(json.dumps(settings or {}, sort_keys=True, default=str))


def run_fingerprint(settings: dict[str, Any]) -> str:
    """One short id for everything that changes the output; every record carries it."""
    return stable_key("sftlab-curation", normalised(settings))


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """`temperature 0.0 -> 0.7, n 1 -> 2`: what changed, in words a user can act on."""
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k} {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in keys
                     if old.get(k) != new.get(k))


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when two paths name one file (links and relative paths included)."""
    a, b = Path(a), Path(b)
    with suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _complete_lines(raw: bytes) -> list[bytes]:
    """The newline-terminated lines; a torn rest is left out. Only b"\\n" ends a line (JSON never holds a raw one)."""
    return [line + b"\n" for line in raw.split(b"\n")[:-1]]


def _is_summary(path: Path) -> bool:
    """A run summary this tool wrote (a JSON object with the summary's counters)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and "records_written" in obj and "already_done" in obj


def _is_sqlite(path: Path) -> bool:
    """An (empty or) SQLite file: anything else at the cache's name belongs to someone else."""
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_HEADER))
    return head in (b"", _SQLITE_HEADER)


@dataclass(frozen=True)
class CurationFiles:
    """Every file a curation run writes: the output and its companions, all named after `--out`."""

    out: Path

    @property
    def manifest(self) -> Path:
        """The run's settings, written before the first record: what makes the output recognisably ours."""
        return self.out.with_name(self.out.name + ".manifest.json")

    @property
    def done(self) -> Path:
        return self.out.with_name(self.out.name + ".done")  # prompts that produced no record

    @property
    def summary(self) -> Path:
        return self.out.with_suffix(".summary.json")

    @property
    def cache(self) -> Path:
        return self.out.with_suffix(".cache.sqlite")

    def written(self) -> list[Path]:
        """Every path the run may write, none of which may be an input."""
        return [self.out, self.manifest, self.done, self.summary, self.cache]

    def read_manifest(self) -> dict[str, Any] | None:
        """The stored manifest, None when there is none; a file at that name that is not ours is an error."""
        if not self.manifest.exists():
            return None
        try:
            obj = json.loads(self.manifest.read_text(encoding="utf-8"))
        except (ValueError, RecursionError):
            obj = None
        if not isinstance(obj, dict) or obj.get("format") != MANIFEST_FORMAT or not isinstance(
                obj.get("settings"), dict):
            raise ConfigError(f"{self.manifest} exists but is not a manifest written by sftlab curate; "
                              f"refusing to touch it or {self.out}: choose a new --out")
        return obj

    def has_work(self) -> bool:
        """Whether anything was written under the stored settings (even a torn group: it is not ours to drop)."""
        return any(p.is_file() and p.stat().st_size > 0 for p in (self.out, self.done))

    def check(self, settings: dict[str, Any] | None = None, inputs: Iterable[str | Path] = ()) -> None:
        """Refuse, before anything is written, every output that could destroy or mix up a user's files."""
        self._check_paths(inputs)
        manifest = self.read_manifest()
        if manifest is None:
            self._check_fresh()
            return
        if normalised(settings) != manifest["settings"] and self.has_work():
            raise ConfigError(f"{self.out} was made with different settings ({self.manifest.name}): "
                              f"{settings_diff(manifest['settings'], normalised(settings))}; its records would "
                              "mix with the new ones: use a new --out, or re-run with the earlier settings to resume")

    def _check_paths(self, inputs: Iterable[str | Path]) -> None:
        if self.out.is_dir():
            raise ConfigError(f"--out {self.out} is a folder; give a file path, e.g. {self.out / 'curated.jsonl'}")
        for src in inputs:
            if not src or not Path(src).is_file():
                continue
            for path in self.written():
                if same_file(path, src):
                    what = "is" if path == self.out else f"would write {path}, which is"
                    raise ConfigError(f"--out {self.out} {what} the input {src}: the output can never be an "
                                      "input; choose a new --out")
        for path in self.written()[1:]:
            if path.is_dir():
                raise ConfigError(f"{path} (where --out {self.out} keeps its companion file) is a folder; "
                                  "choose another --out")
        if self.summary.exists() and not _is_summary(self.summary):
            raise ConfigError(f"{self.summary} exists and is not a run summary written by sftlab curate; refusing "
                              f"to overwrite it: choose another --out")
        if self.cache.exists() and not _is_sqlite(self.cache):
            raise ConfigError(f"{self.cache} exists and is not a SQLite generation cache; refusing to touch it: "
                              "choose another --out or pass --no-cache")

    def _check_fresh(self) -> None:
        """No manifest: the output may only be new (or empty), and no stray state file may be adopted."""
        if self.out.exists() and self.out.stat().st_size > 0:
            raise ConfigError(f"--out {self.out} already exists and was not written by sftlab curate (no "
                              f"{self.manifest.name} beside it); refusing to append to or truncate it: "
                              "choose a new --out")
        if self.done.exists() and self.done.stat().st_size > 0:
            raise ConfigError(f"{self.done} exists without {self.manifest.name} (left by an older sftlab or a "
                              "deleted output); delete it or choose a new --out")


def _report_names(report: Path, out: Path) -> bool:
    """Whether a filter report (curation_report.json) says it was written together with `out`."""
    try:
        obj = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and isinstance(obj.get("output"), str) and Path(obj["output"]).name == out.name


def check_selection_output(output: str | Path, report_dir: str | Path, inputs: Iterable[str | Path] = (),
                           overwrite: bool = False) -> None:
    """`curate filter` replaces its output in one rename: allowed for a selection it wrote before (its report
    names it) or with --overwrite; never for a folder or one of the run's inputs."""
    out, report = Path(output), Path(report_dir) / "curation_report.json"
    ours = out.is_file() and (out.stat().st_size == 0 or _report_names(report, out))
    refuse_to_clobber(out, inputs=inputs, overwrite=overwrite or ours,
                      not_ours=f"is not a selection written by sftlab curate filter (no {report} naming it)")


def write_failed(e: OSError, path: Path, out: Path, records: int) -> SftlabError:
    """A failed write as one sentence: what, where, and that every finished prompt is kept."""
    why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return SftlabError(f"could not write {path}: {why}; the {records} records of finished prompts in {out} are "
                       "kept (no partial prompt): fix the cause and re-run the same command to resume")


class ResumableJsonl:
    """Append-only JSONL of record groups (one group per prompt), resumable after a crash; see the module doc."""

    def __init__(self, path: str | Path, settings: dict[str, Any] | None = None,
                 inputs: Iterable[str | Path] = ()) -> None:
        self.files = CurationFiles(Path(path))
        self.path = self.files.out
        self.settings = normalised(settings)
        self.fingerprint = run_fingerprint(self.settings)
        self.files.check(self.settings, inputs)
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
