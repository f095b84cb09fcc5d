"""Merge a LoRA adapter into its base model and save a standard HF checkpoint (transformers, vLLM)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from sftlab.errors import ModelError
from sftlab.fsutil import check_folder_output, replace_folder, staging_folder, write_marker
from sftlab.models.loading import load_model, load_tokenizer, recorded_model, resolve_model_path
from sftlab.models.lora import is_adapter_dir, load_adapter


def export_merged(adapter_dir: str | Path, out_dir: str | Path, base: str | None = None,
                  dtype: torch.dtype = torch.float32, overwrite: bool = False) -> Path:
    """base defaults to the model recorded in the adapter's sftlab.json (or adapter_config.json). An existing
    `out_dir` is replaced only with `overwrite` and only when it is an earlier export (see sftlab.fsutil)."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not is_adapter_dir(adapter_dir):
        raise ModelError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json)")
    base = base or recorded_base(adapter_dir)
    keep = [adapter_dir, base]
    check_folder_output(out_dir, "export", overwrite, keep, what="the merged model", earlier="an earlier export")
    staged = staging_folder(out_dir)
    try:
        merge_into(staged, adapter_dir, base, dtype)
        write_marker(staged, "export")
        return replace_folder(staged, out_dir, "export", keep)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # only left when something failed: our own temp folder


def merge_into(folder: Path, adapter_dir: Path, base: str, dtype: torch.dtype = torch.float32) -> None:
    """Save base + adapter, merged, with the adapter's tokenizer and generation settings, into `folder`."""
    merged = load_adapter(load_model(resolve_model_path(base), dtype), adapter_dir).merge_and_unload()
    merged.save_pretrained(folder, safe_serialization=True)
    load_tokenizer(str(adapter_dir)).save_pretrained(folder)
    for name in ("generation_config.json", "sftlab.json"):
        if (adapter_dir / name).exists():
            shutil.copy(adapter_dir / name, folder / name)


def recorded_base(adapter_dir: Path) -> str:
    """The base model an adapter was trained on, as sftlab (or PEFT) recorded it."""
    meta = adapter_dir / "sftlab.json"
    try:
        if meta.exists():
            record = json.loads(meta.read_text())
            return recorded_model(record["base_model"], record.get("model_spec"))
        return json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{adapter_dir}: cannot tell which base model the adapter belongs to ({e}); "
                         "pass --base") from None
