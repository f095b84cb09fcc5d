"""Writers that never leave a half-written file behind: write to a temp file, fsync, rename."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sftlab.data.schema import Conversation
from sftlab.errors import ConfigError

_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # disk full, quota exceeded, file too large


_SQLITE_URL = re.compile(r"sqlite(?:\+\w+)?:///([^?]+)")


def _input_file(src: str | Path) -> str:
    """The file an input reads: a SQLite URL's database too (`data convert sqlite:///pool.db pool.db`)."""
    found = _SQLITE_URL.match(str(src))
    return found[1] if found else str(src)


def refuse_to_clobber(dst: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False,
                      not_ours: str = "") -> None:
    """Nothing is lost: an output is never one of the inputs, never a folder, and replaces a file only when asked
    (`not_ours` says why an existing file may not simply be replaced)."""
    dst = Path(dst)
    if dst.is_dir():
        raise ConfigError(f"{dst}: is a folder, expected the path of the output file")
    if not dst.exists():
        return
    for src in map(_input_file, inputs):
        if src and Path(src).exists() and os.path.samefile(src, dst):
            raise ConfigError(f"{dst}: is the input ({src}): the output can never be an input; write the output "
                              "to another file")
    if not overwrite:
        raise ConfigError(f"{dst}: already exists{' and ' + not_ours if not_ours else ''}; pass --overwrite to "
                          "replace it, or choose another output")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temp file beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "the output is a folder, expected a file path", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None and e.errno in _WRITE_ERRNOS:  # a failed write names no file: name the output
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any] | Conversation]) -> int:
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row.to_dict() if isinstance(row, Conversation) else row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)
