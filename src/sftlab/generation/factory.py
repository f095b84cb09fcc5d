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
    """A transformers generator: the model on the GPU when there is one, the adapter merged (see load_causal_lm)."""
    from sftlab.generation.transformers_backend import TransformersGenerator
    from sftlab.models.causal_lm import load_causal_lm

    lm = load_causal_lm(path, adapter=adapter, chat_template=chat_template)
    return TransformersGenerator(lm.model, lm.tokenizer, batch_size=batch_size, stop_ids=lm.stop_ids,
                                 model_id=f"{model_id or path}+{adapter}" if adapter else (model_id or path))
