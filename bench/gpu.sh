#!/usr/bin/env bash
# sftlab's GPU defaults vs TRL's defaults (and TRL + Liger) on one GPU, in one run of about 9 minutes that ends
# with a summary table: LoRA and full fine-tuning of a gemma-3-270m-shaped and a gemma-3-1b-shaped model (random
# weights), sequences of 1024-1900 tokens, batches sized for a large GPU; tokens/s, MFU and peak GPU memory.
# The GPU machine cannot reach the internet or ../shared, so what it lacks is prepared here, once:
#
#   bash bench/gpu.sh prepare        # .gpu/: wheels (pinned versions), gemma configs + tokenizer, long sequences
#
# then run there, with .gpu carried, in the repository root:
#
#   bash bench/gpu.sh run            # $OUT (default bench/results/gpu): a JSON per stage, stages.log, summary.md,
#                                    # then the training, generation and resume tests on the GPU (tests.log)
#   bash bench/gpu.sh --smoke        # the same stages on tiny models on this CPU (minutes): checks the script
#
# Weights (1-4 GB) do not travel: the benchmark draws fresh weights for each shape (--random-weights); tokens/s,
# memory and FLOP/s do not depend on the weights' values (the losses are an untrained model's).
# Knobs (environment): BATCH_270M (16), BATCH_1B (16), STEPS (8), PEAK_TFLOPS (datasheet bf16 dense peak for
# MFU; detected for H100/H200 = 989, A100 = 312), LIGER (unset; 1: the TRL + Liger rows), TEST_LIMIT (90 s).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}

if [ "$mode" = prepare ]; then
  py=${PYTHON:-.venv/bin/python}
  mkdir -p .gpu/whl .gpu/gemma-3-270m .gpu/gemma-3-1b-shape
  exclude=$(git rev-parse --git-path info/exclude)  # also right in a worktree, where .git is a file
  mkdir -p "$(dirname "$exclude")"
  grep -qx "/.gpu/" "$exclude" 2>/dev/null || echo "/.gpu/" >>"$exclude"
  # the versions of requirements.lock; pydantic_core is compiled, so for the GPU image's Python (3.12)
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
    transformers==5.24.0 trl==1.16.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 liger-kernel==0.8.5 \
    gguf==0.19.0 SQLAlchemy==2.1.9 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 jsonschema==4.26.0 \
    jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 datasketch==2.0.0  # for the tests
  model=$($py -c "from sftlab.models.loading import resolve_model_path; print(resolve_model_path('gemma-3-270m'))")
  cp "$model"/{config.json,generation_config.json,tokenizer_config.json} .gpu/gemma-3-270m/
  $py bench/gpu_prep.py shape "$model" .gpu/gemma-3-1b-shape --shape 1b
  rm -f .gpu/gemma-3-1b-shape/tokenizer.json  # travels once, compressed
  gzip -9 -c "$model/tokenizer.json" >.gpu/tokenizer.json.gz  # 33 MB -> 5 MB: the tree that travels is capped
  $py bench/gpu_prep.py data "$model" .gpu/long.jsonl --records 512 --min-tokens 1024 --max-tokens 1900
  du -sh .gpu
  exit 0
fi

if [ "$mode" = --smoke ] || [ "$mode" = smoke ]; then
  # tiny models, short sequences, 3 steps: every stage, the Liger row (skipped where liger-kernel is missing)
  # and the summary, end to end on a CPU
  py=${PYTHON:-python3}
  OUT=${OUT:-$(mktemp -d)/gpu-smoke}
  work=$(mktemp -d)
  mkdir -p "$OUT"
  $py -c "from sftlab.testing import save_tiny_model; save_tiny_model('$work/tiny')"
  $py bench/gpu_prep.py shape "$work/tiny" "$work/tiny-wide" --shape tiny-wide
  $py bench/gpu_prep.py data "$work/tiny" "$work/long.jsonl" --records 16 --min-tokens 64 --max-tokens 120
  for shape in tiny tiny-wide; do
    $py bench/train_throughput.py --model "$work/$shape" --random-weights --data "$work/long.jsonl" \
      --max-length 128 --batch-size 2 --grad-accum 1 --repeats 1 --steps 3 --skip-check --trl-liger \
      --sftlab-defaults --keep-going --json "$OUT/train_throughput_gpu_${shape}_all.json" \
      >"$OUT/train_throughput_gpu_${shape}.log" 2>&1
  done
  $py bench/gpu_prep.py summary "$OUT" | tee "$OUT/summary.md"
  echo "smoke results in $OUT"
  exit 0
fi

start=$SECONDS
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
# the GPU image has torch but not the pinned transformers/TRL/PEFT/datasets/pydantic: install the carried wheels
python3 -c "import trl" 2>/dev/null ||
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
for d in .gpu/gemma-3-270m .gpu/gemma-3-1b-shape; do
  [ -f $d/tokenizer.json ] || gunzip -c .gpu/tokenizer.json.gz >$d/tokenizer.json
done
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
case "$gpu" in *H100*|*H200*) peak=989 ;; *A100*) peak=312 ;; *) peak= ;; esac
peak=${PEAK_TFLOPS:-$peak}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python3 -c "import torch, transformers, trl, peft; print(torch.__version__, transformers.__version__, trl.__version__, peft.__version__)"
  python3 -c "import liger_kernel; print('liger-kernel', liger_kernel.__version__ if hasattr(liger_kernel, '__version__') else 'present')" || true
  echo "peak bf16 TFLOP/s for MFU: ${peak:-unknown}"
} 2>&1 | tee "$OUT/gpu_env.txt"

# shape, method, batch, time limit (s): the 1B shape first (its MFU is the target); each stage leaves its JSON,
# summarised after every run, even when cut. Sized from the 2026-11-30 H200 run: each tool's run is a process
# that pays ~25 s of start-up, model load and tokenizing besides its steps; the 1B shape's fresh weights ~40 s.
# LIGER=1 adds TRL + use_liger_kernel to every stage (0.82x plain TRL in the one run that measured it).
set +e
stage() {
  local shape=$1 method=$2 batch=$3 limit=$4
  timeout "$limit" python3 bench/train_throughput.py --model ".gpu/$shape" --random-weights --data .gpu/long.jsonl \
    --max-length 2048 --batch-size "$batch" --grad-accum 1 --repeats 1 --steps "${STEPS:-8}" --skip-check \
    ${LIGER:+--trl-liger} --sftlab-defaults --keep-going ${peak:+--peak-tflops "$peak"} --methods "$method" \
    --json "$OUT/train_throughput_gpu_${shape}_${method}.json" 2>&1 | tee -a "$OUT/stages.log"
}
stage gemma-3-1b-shape full "${BATCH_1B:-16}" 160
stage gemma-3-1b-shape lora "${BATCH_1B:-16}" 110
stage gemma-3-270m lora "${BATCH_270M:-16}" 80
stage gemma-3-270m full "${BATCH_270M:-16}" 75
python3 bench/gpu_prep.py summary "$OUT" | tee "$OUT/summary.md"
# the unit tests that train, generate and resume, run where sftlab picks the GPU by itself (tiny models)
timeout "${TEST_LIMIT:-90}" python3 -m pytest -q -p no:cacheprovider -m "not slow" -n 8 tests/test_train.py \
  tests/test_generation.py tests/test_resume.py tests/test_masking.py 2>&1 | tee "$OUT/tests.log" | tail -30
echo "total $((SECONDS - start)) s"
