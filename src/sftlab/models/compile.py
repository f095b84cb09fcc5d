"""Regional compilation: torch.compile each decoder layer, the block a model repeats, instead of the whole model.

Why layers: the elementwise work between matmuls (norms, activations, rotary, residual adds, dtype casts,
LoRA scaling) is memory-bound and, run op by op, costs as much as the matmuls of a small model on CPU; the
compiler fuses it. All layers share one traced graph (per layer kind), so compile time is that of one layer,
not of the model, and the state dict keeps its names (no `_orig_mod.` prefix): saving, PEFT and resuming are
unchanged. Dynamic shapes, so varying batch and sequence lengths do not recompile.
"""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)

MIN_AUTO_PARAMS = 100_000_000


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The repeated blocks of a transformers causal LM (inside PEFT wrappers), or None if not found."""
    from sftlab.models.loading import unwrap_causal_lm

    lm = unwrap_causal_lm(model)
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) and len(layers) else None


def should_compile_layers(setting: bool | str, model: torch.nn.Module, device_type: str = "cpu") -> bool:
    """`auto`: compile real models (>= 100M parameters) trained on CPU, whose steps take seconds and amortise
    the one-off compile (about 20-70 s on 2 CPU cores, cached on disk for later runs); skip small test models.
    Not on GPUs: the one measurement there (H200, gemma-3-270m) was slower than TRL's eager run, with a
    97 s first step; `true` still compiles anywhere."""
    if setting == "auto":
        return device_type == "cpu" and sum(p.numel() for p in model.parameters()) >= MIN_AUTO_PARAMS
    return bool(setting)


def compile_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Compile every decoder layer in place; returns the layers compiled (empty if the model has none)."""
    layers = decoder_layers(model)
    if layers is None:
        log.warning("compile: no decoder layers found on %s; running eager", type(model).__name__)
        return []
    for layer in layers:
        layer.compile(dynamic=True)
    return list(layers)


def uncompile_layers(layers: list[torch.nn.Module]) -> None:
    """Back to eager (e.g. after a compiler failure): nn.Module.compile only sets `_compiled_call_impl`."""
    for layer in layers:
        layer._compiled_call_impl = None


def is_compiler_error(error: BaseException) -> bool:
    """True for failures of dynamo/inductor (no C++ compiler, an unsupported op), not of the model itself."""
    module = type(error).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor")) or "InductorError" in type(error).__name__


def compiler_error_summary(error: BaseException) -> str:
    """The first line of a compiler error (inductor's messages run to pages), for a one-line warning."""
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


@contextlib.contextmanager
def eager() -> None:
    """Run compiled modules eagerly inside this block (one-off checks should not trigger another compile)."""
    with torch.compiler.set_stance("force_eager"):
        yield
