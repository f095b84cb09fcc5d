"""The one way sftlab loads a causal LM with its tokenizer, for training and for inference: model spec -> local
checkpoint, tokenizer with a chat template, weights in the right dtype on the right device, an optional LoRA
adapter, and the token ids that end a reply. train, generation, evaluate and the CLI all call `load_causal_lm`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from sftlab.errors import ModelError
from sftlab.models.loading import (
    checkpoint_dtype,
    default_device,
    fast_bf16,
    load_model,
    load_tokenizer,
    resolve_model_path,
)

DType = Literal["auto", "float32", "bfloat16", "float16"] | torch.dtype


@dataclass
class LoadedLM:
    """A model ready to use: `template` names the chat template in force ("model" for the checkpoint's own);
    `added_tokens` says the template added special tokens (training resizes the embeddings for them)."""

    model: Any
    tokenizer: Any
    path: str  # the resolved base checkpoint
    template: str | None = None
    added_tokens: bool = False

    @property
    def stop_ids(self) -> list[int]:
        return stop_ids_of(self.model, self.tokenizer)


def inference_dtype(path: str, device: str) -> torch.dtype:
    """bf16 on a GPU, and on a CPU with fast bf16 for a checkpoint stored in bf16 (nothing to gain from fp32 there;
    ~2x faster); fp32 on a CPU that emulates bf16 (`fast_bf16`)."""
    if not fast_bf16(device):
        return torch.float32
    return torch.bfloat16 if device == "cuda" or checkpoint_dtype(path) == "bfloat16" else torch.float32


def stop_ids_of(model, tokenizer) -> list[int]:
    """The template's end-of-turn tokens, then the checkpoint's own end tokens (generation_config.eos_token_id,
    an id or a list), so generation stops wherever plain `generate` and vLLM would."""
    from sftlab.templates.masking import stop_token_ids

    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return list(dict.fromkeys(stop_token_ids(tokenizer) + ([eos] if isinstance(eos, int) else list(eos or []))))


def load_causal_lm(spec: str, *, training: bool = False, adapter: str | Path | None = None, merge_adapter: bool = True,
                   tokenizer_from: str | Path | None = None, chat_template: str | None = "auto", dtype: DType = "auto",
                   device: str | None = "auto", attn_implementation: str | None = None) -> LoadedLM:
    """Load `spec` (packaged name, HF folder, .gguf, hub id).

    - tokenizer: from `tokenizer_from`, else the adapter's folder, else the checkpoint; `chat_template` is ensured
      (None leaves the tokenizer as saved); for training a missing pad token becomes the EOS token.
    - dtype "auto": for inference bf16 on a GPU or for a bf16 checkpoint, else fp32; for training fp32.
    - device "auto": for inference cuda when available, else the CPU; for training none (Trainer places it).
    - adapter: a LoRA folder applied on top, merged into the weights unless `merge_adapter` is False (then the
      PEFT model comes back, whose `disable_adapter()` gives the base model on the same weights).
    Models for inference come back in eval mode."""
    path = resolve_model_path(spec)
    if adapter is not None:
        check_adapter_folder(adapter)
    tokenizer, template, added = load_chat_tokenizer(str(tokenizer_from or adapter or path), chat_template)
    if training and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device == "auto":
        device = None if training else default_device()
    if dtype == "auto":
        dtype = torch.float32 if training else inference_dtype(path, device or "cpu")
    model = load_model(path, dtype, device=device, attn_implementation=attn_implementation)
    if adapter:
        from sftlab.models.lora import load_adapter

        model = load_adapter(model, adapter)
        model = model.merge_and_unload() if merge_adapter else model
    if not training:
        model.eval()
        use_kv_cache(model)
    return LoadedLM(model, tokenizer, path, template, added)


def check_adapter_folder(adapter: str | Path) -> None:
    """A local adapter folder that is missing or holds no adapter is named as such, before its tokenizer is looked
    for (which, for a missing folder, ends in a "could not connect to huggingface.co"); a hub id is left to PEFT."""
    from sftlab.models.lora import is_adapter_dir

    if Path(adapter).is_dir() and not is_adapter_dir(adapter):
        raise ModelError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    if not Path(adapter).exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", str(adapter)):
        raise ModelError(f"{adapter}: adapter folder not found")


def use_kv_cache(model) -> None:
    """Generate with a KV cache even from a checkpoint saved with `use_cache: false` (gradient checkpointing turns
    it off; sftlab's full fine-tunes were saved so until 2026-11-30): 6x slower generation without it."""
    model.config.use_cache = True
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.use_cache = True


def load_chat_tokenizer(path: str, chat_template: str | None = "auto") -> tuple[Any, str | None, bool]:
    """(tokenizer of a resolved checkpoint, template name, whether the template added tokens); the tokenizer
    half of `load_causal_lm`, for commands that only tokenize (`sftlab data check --model`)."""
    from sftlab.templates.chat_templates import ensure_chat_template

    tokenizer = load_tokenizer(path)
    template, added = ensure_chat_template(tokenizer, chat_template) if chat_template else (None, False)
    return tokenizer, template, added
