"""vLLM engine, used when vLLM is installed and a GPU is present (imported lazily).

`VLLMOptions` is the engine's part of a config: tensor parallelism (one model split over GPUs) and data-parallel
replicas (copies of the model, prompts spread over them), validated here and handed to vLLM's `LLM` as its own
engine arguments, so vLLM does the placement and the scheduling.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sftlab.errors import ConfigError
from sftlab.generation.base import Generation, Messages, SamplingParams
from sftlab.templates.masking import prompt_ids
from sftlab.yamlconfig import parse_set_items, validated


class VLLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one copy of the model is split over.")
    data_parallel_size: int = Field(1, ge=1, description="Copies of the model (each on tensor_parallel_size "
                                                         "GPUs); vLLM spreads the prompts over them.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of each GPU's memory vLLM may use.")
    max_model_len: int | None = Field(None, ge=1, description="Context window; default: the model's.")

    @property
    def gpus(self) -> int:
        return self.tensor_parallel_size * self.data_parallel_size

    def engine_kwargs(self) -> dict[str, Any]:
        """vLLM's own engine arguments (defaults left out, so vLLM's stay in charge)."""
        return self.model_dump(exclude_defaults=True)


def vllm_options(raw: VLLMOptions | dict[str, Any] | None, source: str = "vllm options") -> VLLMOptions:
    """Options from a config mapping (e.g. a YAML `vllm:` section); a wrong key or value is a ConfigError."""
    if isinstance(raw, VLLMOptions):
        return raw
    return validated(VLLMOptions, raw or {}, source)


def vllm_options_from_cli(items: list[str] | dict[str, Any], base_url: list[str] | None = None) -> VLLMOptions | None:
    """`--vllm KEY=VALUE` options (VALUE is YAML: `2`, `0.85`), or a mapping (a recipe's `vllm:`), as checked engine
    options, None when none are given; a malformed item or a wrong key or value is a ConfigError naming it."""
    if not items:
        return None
    if base_url:
        raise ConfigError("--vllm sets the local vLLM engine's options; with --base-url the endpoint's server "
                          "runs the model (set them there, e.g. vllm serve --tensor-parallel-size 2)")
    if isinstance(items, dict):
        return vllm_options(items, "--vllm")
    raw: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--vllm '{item}': expected KEY=VALUE (e.g. --vllm tensor_parallel_size=2)")
        raw.update(parse_set_items([f"{key.strip()}={text}"]))
    return vllm_options(raw, "--vllm")


def check_gpus(options: VLLMOptions, available: int) -> None:
    """Refuse, before vLLM starts, a layout that needs more GPUs than the machine has."""
    if options.gpus > available:
        raise ConfigError(f"vllm: tensor_parallel_size {options.tensor_parallel_size} x data_parallel_size "
                          f"{options.data_parallel_size} needs {options.gpus} GPUs; this machine has {available}")


def vllm_available() -> bool:
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


class VLLMGenerator:
    def __init__(self, model_path: str, options: VLLMOptions | dict[str, Any] | None = None) -> None:
        opts = vllm_options(options)
        try:
            import torch
            from vllm import LLM
        except ImportError:
            raise ConfigError("engine vllm: vLLM is not installed (pip install vllm, on a GPU machine)") from None
        check_gpus(opts, torch.cuda.device_count())
        self.llm = LLM(model=model_path, trust_remote_code=False, **opts.engine_kwargs())
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
