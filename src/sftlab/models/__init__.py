"""Shared model services: resolve a model spec, convert GGUF once, load with safe defaults, attach LoRA."""

from sftlab.models.loading import load_model, load_tokenizer, resolve_model_path

__all__ = ["load_model", "load_tokenizer", "resolve_model_path"]
