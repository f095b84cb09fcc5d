#!/usr/bin/env bash
# The training benchmark on a GPU machine that cannot reach the internet or ../shared (e.g. this workplace's
# H200 through the `device` tool). Prepare here, once, what the machine lacks:
#
#   bash bench/gpu.sh prepare        # .gpu/: wheels (pinned versions), gemma config + tokenizer, the data mix
#
# then run there, with .gpu carried, in the repository root:
#
#   bash bench/gpu.sh run            # writes $OUT (default bench/results/gpu) logs + JSON
#
# The gemma-3-270m weights (1 GB) do not travel: the benchmark draws fresh weights for the same architecture
# (--random-weights); tokens/s, memory and FLOP/s do not depend on the weights' values, the loss values do.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}

if [ "$mode" = prepare ]; then
  py=.venv/bin/python
  mkdir -p .git/info .gpu/whl .gpu/gemma-3-270m
  grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >>.git/info/exclude
  # the versions of requirements.lock; pydantic_core is compiled, so for the GPU image's Python (3.12)
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
    transformers==5.24.0 trl==1.16.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 liger-kernel==0.8.5
  model=$($py -c "from sftlab.models.loading import resolve_model_path; print(resolve_model_path('gemma-3-270m'))")
  cp "$model"/{config.json,generation_config.json,tokenizer_config.json} .gpu/gemma-3-270m/
  gzip -9 -c "$model/tokenizer.json" >.gpu/tokenizer.json.gz  # 33 MB -> 5 MB: the tree that travels is capped
  $py -c "import runpy; from pathlib import Path; runpy.run_path('bench/train_throughput.py')['build_data'](Path('.gpu/data.jsonl'), 999)"
  du -sh .gpu
  exit 0
fi

OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
# the GPU image has torch but not the pinned transformers/TRL/PEFT/datasets/pydantic: install the carried wheels
python3 -c "import trl" 2>/dev/null ||
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -f .gpu/gemma-3-270m/tokenizer.json ] || gunzip -c .gpu/tokenizer.json.gz >.gpu/gemma-3-270m/tokenizer.json
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python3 -c "import torch, transformers, trl, peft; print(torch.__version__, transformers.__version__, trl.__version__, peft.__version__)"
} 2>&1 | tee "$OUT/gpu_env.txt"

# QUICK=1: the same stages on the tiny model (seconds, any machine), to check this script
model=(--model .gpu/gemma-3-270m --random-weights)
[ -n "${QUICK:-}" ] && model=(--quick)
common=("${model[@]}" --data .gpu/data.jsonl --batch-size 32 --grad-accum 1 --repeats 1)
set +e  # a stage that fails or runs out of time still leaves the others' results
timeout 260 python3 bench/train_throughput.py "${common[@]}" --methods lora --steps 30 --skip-check --trl-liger \
  --json "$OUT/train_throughput_gpu_lora.json" 2>&1 | tee "$OUT/train_throughput_gpu_lora.log"
timeout 180 python3 bench/train_throughput.py "${common[@]}" --methods full --steps 30 --skip-check --trl-liger \
  --json "$OUT/train_throughput_gpu_full.json" 2>&1 | tee "$OUT/train_throughput_gpu_full.log"
timeout 120 python3 bench/train_throughput.py "${common[@]}" --steps 4 --check-loss \
  --json "$OUT/train_loss_check_gpu.json" 2>&1 | tee "$OUT/train_loss_check_gpu.log"
