"""Load any causal LM the same way: packaged name, local HF folder, GGUF file, or hub id.

GGUF files are dequantised once into a plain safetensors checkpoint under the cache folder
(`$SFTLAB_CACHE`, default ~/.cache/sftlab): transformers flags a GGUF-loaded model as quantized and
Trainer refuses to train it, and re-dequantising on every run would waste a minute each time.
Security defaults: trust_remote_code off, safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sftlab.errors import ModelError
from sftlab.models.packaged import PACKAGED, conversion_options, packaged_gguf, packaged_name_of

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("SFTLAB_CACHE", Path.home() / ".cache" / "sftlab"))


def _fingerprint(path: Path, sample: int = 4 << 20) -> str:
    """The file's identity from its content (size, first and last 4 MiB), not its path: a reinstalled package or a
    new virtual environment finds the checkpoint already converted instead of adding another copy."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(sample))
        f.seek(max(0, size - sample))
        digest.update(f.read(sample))
    return digest.hexdigest()[:12]


def gguf_to_hf(gguf_path: str | Path, out_root: Path | None = None, dtype: str = "float32",
               stop_tokens: tuple[str, ...] = ()) -> Path:
    """Dequantise a GGUF file into a cached HF checkpoint (`dtype` safetensors + tokenizer); reuse it after.
    `stop_tokens` become the generation config's eos ids (a GGUF records a single eos)."""
    gguf_path = Path(gguf_path)
    if not gguf_path.exists():
        raise ModelError(f"GGUF file not found: {gguf_path}")
    out = (out_root or cache_dir() / "models") / f"{gguf_path.stem}-{_fingerprint(gguf_path)}-{dtype}"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    log.info("dequantising %s into %s (once)", gguf_path, out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.random.fork_rng(devices=[]):  # a first run must train the same model as later runs
        _write_plain_checkpoint(gguf_path, tmp, dtype, stop_tokens)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def _write_plain_checkpoint(gguf_path: Path, out: Path, dtype: str, stop_tokens: tuple[str, ...]) -> None:
    """Dequantise into a plain model (the GGUF load initialises weights at random first: it draws from the global
    RNG). The plain model is built on the meta device and takes the dequantised tensors as they are."""
    try:
        with _one_gguf_reader():
            tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            quant = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                         dtype=getattr(torch, dtype))
    except Exception as e:
        raise ModelError(f"could not read GGUF file {gguf_path}: {e}") from e
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are already dequantised: a plain checkpoint
    config.dtype = dtype
    with torch.device("meta"):  # no second random init of every weight (15 s for the 1.5B teacher)
        plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    plain.load_state_dict(quant.state_dict(), strict=True, assign=True)
    plain.generation_config = quant.generation_config
    if stop_tokens:
        plain.generation_config.eos_token_id = tok.convert_tokens_to_ids(list(stop_tokens))
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


@contextmanager
def _one_gguf_reader():
    """transformers parses a GGUF's metadata three times (tokenizer, config, weights), each a Python walk over its
    whole vocabulary (10-20 s for a 150-260k vocabulary on a 2-core CPU): share one reader per file meanwhile."""
    import gguf

    own, readers = gguf.GGUFReader, {}

    def shared(path, *args, **kwargs):
        key = (str(Path(path).resolve()), *args, *sorted(kwargs.items()))
        if key not in readers:
            readers[key] = own(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = own


def resolve_model_path(spec: str) -> str:
    """A loadable HF folder or hub id for `spec`: packaged name | *.gguf | local folder | hub id. A packaged model's
    converted folder that is gone (a record from another cache) is converted again under the current cache."""
    if spec not in PACKAGED and not Path(spec).exists() and (name := packaged_name_of(spec)):
        log.info("%s not found: using packaged model %s under %s", spec, name, cache_dir())
        spec = name
    if spec in PACKAGED:
        return str(gguf_to_hf(packaged_gguf(spec), **conversion_options(spec)))
    p = Path(spec)
    if p.suffix.lower() == ".gguf":
        return str(gguf_to_hf(p))
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(f"{spec} is a folder without config.json: not a Hugging Face model")
        return str(p)
    if spec.startswith((".", "/", "~")):
        raise ModelError(f"model path not found: {spec}")
    return spec  # hub id; needs network unless cached by huggingface_hub


def recorded_model(path: str, spec: str | None = None) -> str:
    """The base model a record names, loadable now: its resolved path while it exists, else the packaged model
    (`spec`) it was converted from, since the cache may have moved since."""
    return spec if spec in PACKAGED and not Path(path).exists() else path


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
NOT_WEIGHTS = {"training_args.bin"}  # Trainer's pickled arguments, never loaded as weights


def require_safetensors(folder: str | Path, what: str = "model") -> None:
    """Refuse a local folder whose weights exist only as pickles: unpickling a file can run any code in it, so
    sftlab loads safetensors only (every model and adapter load goes through here)."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
        return
    pickles = sorted({p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern)} - NOT_WEIGHTS)
    if pickles:
        raise ModelError(f"{folder}: the {what} weights are only in pickle format ({', '.join(pickles)}); sftlab "
                         "loads only safetensors (loading a pickle can run arbitrary code). If you trust the file, "
                         "convert it once, e.g. load it and save_pretrained(..., safe_serialization=True)")


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as e:
        raise ModelError(f"could not load tokenizer from {path}: {e}") from e
    if not tok.is_fast:
        log.warning("tokenizer of %s is not a fast tokenizer; masks are still verified by decoding", path)
    return tok


def checkpoint_dtype(path: str) -> str | None:
    """The dtype a local checkpoint's weights are stored in (its config's `dtype`), e.g. "bfloat16"."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg.get("dtype") or cfg.get("torch_dtype")


def load_model(path: str, dtype: torch.dtype | str = torch.float32, device: str | None = None,
               attn_implementation: str | None = None) -> PreTrainedModel:
    """Load a causal LM with safe defaults; `path` must already be resolved (see resolve_model_path).
    `attn_implementation`: None = transformers' default (SDPA), or e.g. "eager", "flash_attention_2" (GPU)."""
    dtype = resolve_dtype(dtype, device)
    require_safetensors(path)
    try:
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False,
                                                     use_safetensors=True, **extra)
    except Exception as e:
        raise ModelError(f"could not load model from {path}: {e}") from e
    if device:
        model.to(device)
    return model


def unwrap_causal_lm(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers CausalLM inside PEFT/accelerate wrappers."""
    while hasattr(model, "module"):  # DDP / accelerate
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model


def load_lm(spec: str, dtype: torch.dtype | str = "auto"):
    """(model in eval mode, tokenizer with a chat template) for scoring and judging: any model spec, on the GPU
    when there is one (see sftlab.models.causal_lm.load_causal_lm)."""
    from sftlab.models.causal_lm import load_causal_lm

    lm = load_causal_lm(spec, dtype=resolve_dtype(dtype))
    return lm.model, lm.tokenizer


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def fast_bf16(device: str | None = None) -> bool:
    """Whether bf16 beats fp32 on `device`: a GPU with bf16, or a CPU with AVX512-BF16 or AMX. Other CPUs emulate
    bf16 matmuls (measured 4x slower than fp32 on an AVX-512 Xeon without them), so they are better off in fp32."""
    if (device or default_device()) == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_dtype(dtype: torch.dtype | str, device: str | None = None) -> torch.dtype:
    """A dtype or its name; "auto": bf16 where it is fast (`fast_bf16`), else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
