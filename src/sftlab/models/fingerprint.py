"""Which weights a local model folder holds, cheaply: the key part that makes a retrained model a new one."""

from __future__ import annotations

import hashlib
from pathlib import Path


def weights_fingerprint(path: str | Path | None) -> str:
    """Changes when the weights change: names, sizes and mtimes of the weight files of a local folder. Not its path:
    a folder moved (or copied with its times) answers from the generation caches it filled."""
    if path is None:
        return "-"
    p = Path(path)
    if not p.exists():
        return str(path)  # a hub id or endpoint model name
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.suffix in (".safetensors", ".gguf", ".bin"))
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(p) if f != p else f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]
