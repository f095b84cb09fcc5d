"""Build a generator from CLI-style options: an HTTP endpoint, vLLM, or transformers (the default)."""

from __future__ import annotations

from sftlab.generation.base import Generator


def build_generator(model: str, *, adapter: str | None = None, base_url: str | list[str] | None = None,
                    engine: str = "auto", batch_size: int = 8, api_key_env: str | None = "OPENAI_API_KEY",
                    concurrency: int = 4, chat_template: str = "auto", vllm: dict | None = None) -> Generator:
    """`vllm`: the vLLM engine's options (tensor_parallel_size, data_parallel_size, ...; see `VLLMOptions`)."""
    if base_url:
        from sftlab.generation.openai_http import OpenAIHTTPGenerator

        return OpenAIHTTPGenerator(base_url, model, api_key_env=api_key_env, concurrency=concurrency)
    from sftlab.generation.vllm_backend import VLLMGenerator, vllm_available
    from sftlab.models.loading import resolve_model_path

    path = resolve_model_path(model)
    if engine == "vllm" or (engine == "auto" and vllm_available() and adapter is None):
        return VLLMGenerator(path, vllm)
    return load_transformers_generator(path, adapter=adapter, batch_size=batch_size, chat_template=chat_template,
                                       model_id=model)


def load_transformers_generator(path: str, adapter: str | None = None, batch_size: int = 8,
                                chat_template: str = "auto", model_id: str | None = None):
    import torch

    from sftlab.generation.transformers_backend import TransformersGenerator
    from sftlab.models.loading import checkpoint_dtype, default_device, load_model, load_tokenizer
    from sftlab.models.lora import load_adapter
    from sftlab.templates.chat_templates import ensure_chat_template

    tok = load_tokenizer(adapter or path)
    ensure_chat_template(tok, chat_template)
    device = default_device()
    # bf16 on a GPU, and on a CPU for a checkpoint stored in bf16 (nothing to gain from fp32 there; ~2x faster)
    bf16 = device == "cuda" or checkpoint_dtype(path) == "bfloat16"
    model = load_model(path, torch.bfloat16 if bf16 else torch.float32, device=device)
    if adapter:
        model = load_adapter(model, adapter).merge_and_unload()
    model.eval()
    return TransformersGenerator(model, tok, batch_size=batch_size,
                                 model_id=f"{model_id or path}+{adapter}" if adapter else (model_id or path))
