"""vLLM engine, used when vLLM is installed and a GPU is present (imported lazily)."""

from __future__ import annotations

from sftlab.generation.base import Generation, Messages, SamplingParams
from sftlab.templates.masking import prompt_ids


def vllm_available() -> bool:
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


class VLLMGenerator:
    def __init__(self, model_path: str, **engine_kwargs) -> None:
        from vllm import LLM

        self.llm = LLM(model=model_path, trust_remote_code=False, **engine_kwargs)
        self.model_id = model_path
        self.context_window = self.llm.llm_engine.model_config.max_model_len

    def generate(self, prompts: list[Messages], params: SamplingParams | None = None) -> list[list[Generation]]:
        from vllm import SamplingParams as VParams

        params = params or SamplingParams()
        vp = VParams(n=params.n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
                     seed=params.seed)
        # sftlab renders and encodes the prompts: message text can never become special tokens
        tok = self.llm.get_tokenizer()
        outs = self.llm.generate([{"prompt_token_ids": prompt_ids(tok, p)} for p in prompts], vp, use_tqdm=False)
        return [[Generation(o.text.strip(), len(o.token_ids), o.finish_reason == "stop") for o in out.outputs]
                for out in outs]
