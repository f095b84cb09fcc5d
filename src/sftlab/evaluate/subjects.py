"""Load the models a suite compares: base and tuned (adapter or full), behind one generation cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sftlab.evaluate.runner import Subject
from sftlab.generation.cache import CachedGenerator, GenerationCache
from sftlab.models.fingerprint import weights_fingerprint

__all__ = ["load_subjects", "weights_fingerprint"]


def load_subjects(model: str, *, adapter: str | Path | None = None, tuned: str | Path | None = None,
                  cache_path: Path | None = None, batch_size: int = 8, dtype: str = "float32") -> list[Subject]:
    """[base, tuned]. With an adapter the tuned model is base + adapter and the base is the same weights with
    the adapter disabled (one copy in memory). `dtype` bfloat16 halves the weights each decoding step reads
    (about 2x faster generation on a CPU with bf16 support); the cache keys include it."""
    from sftlab.generation.transformers_backend import TransformersGenerator
    from sftlab.models.loading import load_model, load_tokenizer, resolve_model_path
    from sftlab.models.lora import load_adapter

    if (adapter is None) == (tuned is None):
        raise ValueError("give exactly one of an adapter or a tuned model")
    base_path = resolve_model_path(model)
    tok = load_tokenizer(str(adapter or tuned))
    base = load_model(base_path, dtype)
    cache = GenerationCache(cache_path) if cache_path else None

    template = hashlib.sha256(str(tok.chat_template).encode()).hexdigest()[:8]  # same weights, new template: new key

    def wrap(gen, label: str, weights) -> CachedGenerator | TransformersGenerator:
        key = f"{label}:{weights_fingerprint(weights)}:{template}:{dtype}"
        return CachedGenerator(gen, cache, key) if cache else gen

    if adapter:
        peft_model = load_adapter(base, adapter).eval()
        gen = TransformersGenerator(peft_model, tok, batch_size=batch_size, model_id=f"{model}+{adapter}")
        base_gen = TransformersGenerator(peft_model, tok, batch_size=batch_size, model_id=model)
        return [Subject("base", wrap(base_gen, "base", base_path), peft_model, tok, peft_model.disable_adapter),
                Subject("tuned", wrap(gen, "tuned", f"{base_path}|{weights_fingerprint(adapter)}"), peft_model, tok)]
    tuned_model = load_model(str(tuned), dtype).eval()
    base.eval()
    return [Subject("base", wrap(TransformersGenerator(base, tok, batch_size=batch_size, model_id=model), "base",
                                 base_path), base, tok),
            Subject("tuned", wrap(TransformersGenerator(tuned_model, tok, batch_size=batch_size,
                                                        model_id=str(tuned)), "tuned", tuned), tuned_model, tok)]
