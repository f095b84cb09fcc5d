"""The files a curation run owns, all named after `--out` (output, manifest, done list, summary, cache), and the
rules that refuse, before anything is written, an output that could destroy or mix up a user's files."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftlab.artifacts.records import FilterReport, check_record_folder
from sftlab.data.set_writers import check_set_output, output_format
from sftlab.errors import ConfigError, SftlabError

MANIFEST_FORMAT = "sftlab-curation/1"
_SQLITE_HEADER = b"SQLite format 3\x00"


def normalised(settings: dict[str, Any] | None) -> dict[str, Any]:
    """Settings as they read back from JSON, so a stored manifest compares equal to a fresh one."""
    return json.loads(json.dumps(settings or {}, sort_keys=True, default=str))


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
                           overwrite: bool = False, fmt: str | None = None) -> None:
    """`curate filter` replaces its output in one rename: allowed for a selection it wrote before (its report
    names it) or with --overwrite; never for a folder sftlab did not write or one of the run's inputs."""
    out, report = Path(output), Path(report_dir) / "curation_report.json"
    fmt = output_format(out, fmt)
    if fmt == "hf":
        ours = out.is_dir() and _report_names(report, out)
    else:
        ours = out.is_file() and (out.stat().st_size == 0 or _report_names(report, out))
    check_set_output(out, fmt, inputs=inputs, overwrite=overwrite or ours,
                     not_ours=f"is not a selection written by sftlab curate filter (no {report} naming it)")
    # its decisions.jsonl, curation_report.* and PNGs never go into a folder of someone else's
    check_record_folder(Path(report_dir), report, FilterReport, "sftlab curate filter", leftovers=("scores.sqlite",))


def write_failed(e: OSError, path: Path, out: Path, records: int) -> SftlabError:
    """A failed write as one sentence: what, where, and that every finished prompt is kept."""
    why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return SftlabError(f"could not write {path}: {why}; the {records} records of finished prompts in {out} are "
                       "kept (no partial prompt): fix the cause and re-run the same command to resume")
