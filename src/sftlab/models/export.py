"""Merge a LoRA adapter into its base model and save a standard HF checkpoint (transformers, vLLM)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from sftlab.errors import ModelError
from sftlab.models.loading import load_model, load_tokenizer, resolve_model_path
from sftlab.models.lora import is_adapter_dir, load_adapter


def export_merged(adapter_dir: str | Path, out_dir: str | Path, base: str | None = None,
                  dtype: torch.dtype = torch.float32) -> Path:
    """base defaults to the model recorded in the adapter's sftlab.json (or adapter_config.json)."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not is_adapter_dir(adapter_dir):
        raise ModelError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json)")
    if base is None:
        meta = adapter_dir / "sftlab.json"
        base = (json.loads(meta.read_text())["base_model"] if meta.exists()
                else json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"])
    merged = load_adapter(load_model(resolve_model_path(base), dtype), adapter_dir).merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    load_tokenizer(str(adapter_dir)).save_pretrained(tmp)
    for name in ("generation_config.json", "sftlab.json"):
        if (adapter_dir / name).exists():
            shutil.copy(adapter_dir / name, tmp / name)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
