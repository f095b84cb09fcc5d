#!/usr/bin/env bash
# Set up, lint, then run the whole test suite (tiny models in seconds, packaged real models marked slow).
# SFTLAB_FAST=1 skips the slow real-model tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests bench
if [ "${SFTLAB_FAST:-0}" = "1" ]; then
  exec .venv/bin/python -m pytest -q --durations=25 -m "not slow" "$@"
fi
exec .venv/bin/python -m pytest -q --durations=25 "$@"
