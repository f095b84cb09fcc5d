#!/usr/bin/env bash
# The main job: set up, then turn gemma-3-270m base into an instruct model with a new identity (13 min on 2 CPU cores with AVX512-BF16/AMX, 28-37 without; first run included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/sftlab demo "$@"
