"""Load the models a suite compares (through sftlab.models.causal_lm): base and tuned (adapter or full), behind one
generation cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sftlab.evaluate.runner import Subject
from sftlab.generation.base import GENERATION_BATCH
from sftlab.generation.cache import CachedGenerator, GenerationCache
from sftlab.models.fingerprint import weights_fingerprint

__all__ = ["load_subjects", "weights_fingerprint"]


def load_subjects(model: str, *, adapter: str | Path | None = None, tuned: str | Path | None = None,
                  cache_path: Path | None = None, batch_size: int = GENERATION_BATCH, dtype: str = "float32",
                  device: str | None = "auto", reuse: list[Path] = ()) -> list[Subject]:
    """[base, tuned]. With an adapter the tuned model is base + adapter and the base is the same weights with
    the adapter disabled (one copy in memory). `dtype` bfloat16 halves the weights each decoding step reads
    (about 2x faster generation on a CPU with bf16 support; "auto" picks it where it is fast); the cache keys
    include the dtype used. `device` "auto": the GPU when there is one. Both models use the tuned model's
    tokenizer and chat template. `reuse`: other generation caches read on a miss (see GenerationCache)."""
    from sftlab.generation.transformers_backend import TransformersGenerator
    from sftlab.models.causal_lm import load_causal_lm
    from sftlab.models.loading import default_device, resolve_dtype
    from sftlab.models.lora import merged_token_rows

    if (adapter is None) == (tuned is None):
        raise ValueError("give exactly one of an adapter or a tuned model")
    torch_dtype = resolve_dtype(dtype, default_device() if device == "auto" else device)
    dtype = str(torch_dtype).removeprefix("torch.")  # the cache keys name the dtype used, "auto" resolved
    options = {"tokenizer_from": adapter or tuned, "chat_template": None, "dtype": torch_dtype, "device": device}
    base = load_causal_lm(model, adapter=adapter, merge_adapter=False, **options)
    tok = base.tokenizer
    cache = GenerationCache(cache_path, also_read=reuse) if cache_path else None

    template = hashlib.sha256(str(tok.chat_template).encode()).hexdigest()[:8]  # same weights, new template: new key

    def subject(label: str, lm, model_id: str, weights: str, **extra) -> Subject:
        gen = TransformersGenerator(lm.model, tok, batch_size=batch_size, model_id=model_id)
        on = next(lm.model.parameters()).device.type  # a GPU's kernels may pick other tokens than the CPU's
        key = f"{label}:{weights}:{template}:{dtype}" + ("" if on == "cpu" else f":{on}")
        return Subject(label, CachedGenerator(gen, cache, key) if cache else gen, lm.model, tok, **extra)

    base_weights = weights_fingerprint(base.path)
    if adapter:
        return [subject("base", base, model, base_weights, context=base.model.disable_adapter),
                subject("tuned", base, f"{model}+{adapter}", f"{base_weights}|{weights_fingerprint(adapter)}",
                        context=lambda: merged_token_rows(base.model))]
    tuned_lm = load_causal_lm(str(tuned), **options)
    return [subject("base", base, model, base_weights),
            subject("tuned", tuned_lm, str(tuned), weights_fingerprint(tuned))]
