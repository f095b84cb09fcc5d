"""Folders sftlab may remove or replace: only the ones it created (recognised by a marker file), never a folder
a user lives in (the current directory, its parents, $HOME and its parents, `/`), never one holding an input of
the command that would remove it. Every command that deletes a folder goes through `remove_owned_folder`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from sftlab import __version__
from sftlab.errors import ConfigError

log = logging.getLogger(__name__)

MARKER = "sftlab-run.json"
MARKER_FORMAT = 1


def write_marker(folder: str | Path, kind: str) -> None:
    """Claim `folder` as sftlab's own output of `kind` (train, export), so a later --overwrite may replace it."""
    from sftlab.data.writers import write_json

    write_json(Path(folder) / MARKER, {"sftlab_marker": MARKER_FORMAT, "kind": kind, "created_by": f"sftlab {kind}",
                                       "sftlab_version": __version__,
                                       "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def marker_kind(folder: str | Path) -> str | None:
    """The kind recorded in `folder`'s marker, or None when the folder is not one sftlab created."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _protected_reason(folder: Path) -> str | None:
    """Why `folder` (resolved) is a place no command may remove, whatever marker it holds."""
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if folder == Path(folder.anchor):
        return "it is the filesystem root"
    if folder == cwd:
        return "it is the current directory"
    if _is_within(cwd, folder):
        return "it contains the current directory"
    if folder == home:
        return "it is your home folder"
    if _is_within(home, folder):
        return "it contains your home folder"
    return None


def removal_refusal(folder: str | Path, kind: str, keep: Iterable[str | Path] = ()) -> str | None:
    """Why `folder` may not be removed to make room for a new `kind` output (None: it may)."""
    folder = Path(folder)
    if folder.is_symlink():
        return "it is a symbolic link"
    resolved = folder.resolve()
    reason = _protected_reason(resolved)
    if reason:
        return reason
    for path in keep:
        if Path(path).exists() and _is_within(Path(path).resolve(), resolved):
            return f"it holds {path}, an input of this command"
    found = marker_kind(folder)
    if found is None:
        return (f"it holds no {MARKER}, so sftlab did not create it; move or delete it yourself, or choose "
                "another output folder")
    if found != kind:
        return f"it is the output of `sftlab {found}`, not of `sftlab {kind}`"
    return None


def check_removable(folder: str | Path, kind: str, keep: Iterable[str | Path] = ()) -> None:
    """Raise a ConfigError naming `folder` and the reason when it may not be removed."""
    reason = removal_refusal(folder, kind, keep)
    if reason:
        resolved = Path(folder).resolve()
        shown = str(folder) if str(folder) == str(resolved) else f"{folder} ({resolved})"
        raise ConfigError(f"refusing to remove {shown}: {reason}")


def remove_owned_folder(folder: str | Path, kind: str, keep: Iterable[str | Path] = ()) -> None:
    """Delete a folder sftlab created as a `kind` output (checked first); anything else is a ConfigError. It is
    renamed aside first: a kill while deleting leaves a hidden `.NAME.*.old` folder, never a half-deleted one
    under its name without its marker (which no later run may then remove)."""
    check_removable(folder, kind, keep)
    folder = Path(folder)
    aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
    os.replace(folder, aside / folder.name)
    shutil.rmtree(aside)


def is_empty_folder(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and not any(folder.iterdir())


def staging_folder(dest: str | Path) -> Path:
    """A new, uniquely named hidden folder beside `dest` to build an output in (never an existing one)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))


def replace_folder(staged: str | Path, dest: str | Path, kind: str, keep: Iterable[str | Path] = ()) -> Path:
    """Move a completed `staged` folder to `dest`; an existing `dest` must be sftlab's own `kind` output (or an
    empty folder) and is only deleted once the new one is in place."""
    staged, dest = Path(staged), Path(dest)
    if not dest.exists() and not dest.is_symlink():
        os.replace(staged, dest)
        return dest
    if is_empty_folder(dest) and not dest.is_symlink():
        dest.rmdir()
        os.replace(staged, dest)
        return dest
    check_removable(dest, kind, keep)
    old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
    os.replace(dest, old / dest.name)
    os.replace(staged, dest)
    shutil.rmtree(old)
    return dest


def check_folder_output(folder: str | Path, kind: str, overwrite: bool, keep: Iterable[str | Path] = (), *,
                        what: str, earlier: str) -> None:
    """Before the (slow) work: a folder output must be new, empty, or an earlier `kind` output replaced on purpose
    (`what` is written; `earlier` is what --overwrite would replace)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; {what} is written to a folder")
    if not folder.exists() or is_empty_folder(folder):
        return
    if not overwrite:
        raise ConfigError(f"{folder} already exists; pass --overwrite to replace {earlier}, or choose another folder")
    check_removable(folder, kind, keep)


class OutputLock:
    """One sftlab process at a time writes an output (two would interleave checkpoints, records, caches): an
    exclusive lock on a hidden `.NAME.lock` file beside it, which the OS releases when the process ends, even by a
    crash; the file is removed on release. Where there is no fcntl (Windows) it does nothing."""

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        self.path = self.target.parent / f".{self.target.name}.lock"
        self._file = None

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:
            return self
        while self._file is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
            except OSError:  # no folder can be made there: writing the output fails too, and says so
                return self
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise ConfigError(f"{self.target} is being written by another sftlab process ({holder}, lock "
                                  f"{self.path}); wait for it to end, or choose another output") from None
            except OSError as e:  # a file system without locks (some network mounts)
                f.close()
                log.warning("cannot lock %s (%s): two jobs writing it at once would not be stopped", self.target, e)
                return self
            if _same_file(f, self.path):  # else the holder removed it on release: lock the new one
                self._file = f
            else:
                f.close()
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}")
        self._file.flush()
        return self

    def release(self) -> None:
        if self._file is not None:
            with suppress(OSError):
                self.path.unlink()
            self._file.close()
            self._file = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _same_file(f, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
    except OSError:
        return False
