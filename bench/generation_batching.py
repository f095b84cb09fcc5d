"""Batched transformers generation vs one prompt at a time, same prompts, same greedy decoding.

    python bench/generation_batching.py                  # SmolLM2-135M-Instruct (packaged), 32 prompts
    python bench/generation_batching.py --quick          # tiny random model

Prints generated tokens/s for both and the ratio batched/sequential, and checks the texts are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    a = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from sftlab.generation.base import SamplingParams, as_messages
    from sftlab.generation.factory import load_transformers_generator
    from sftlab.models.loading import resolve_model_path

    model = a.model
    if a.quick:
        from sftlab.testing import save_tiny_model

        model = str(save_tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
    if (SHARED / "gsm8k" / "train.jsonl").exists():
        lines = (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines()[: a.prompts]
        prompts = [as_messages(json.loads(x)["question"]) for x in lines]
    else:
        prompts = [as_messages(f"Explain the number {i} in one sentence.") for i in range(a.prompts)]
    params = SamplingParams(max_new_tokens=a.max_new_tokens)
    results = {}
    for name, bs in (("sequential", 1), ("batched", a.batch_size)):
        gen = load_transformers_generator(resolve_model_path(model), batch_size=bs)
        gen.generate(prompts[:1], SamplingParams(max_new_tokens=4))  # warm-up
        t = time.perf_counter()
        out = gen.generate(prompts, params)
        dt = time.perf_counter() - t
        tokens = sum(g[0].n_tokens for g in out)
        results[name] = {"seconds": dt, "tokens": tokens, "tokens_per_s": tokens / dt,
                         "texts": [g[0].text for g in out]}
        print(f"{name:10s} batch {bs:3d}: {tokens} tokens in {dt:.1f}s = {tokens / dt:.1f} tokens/s")
    same = sum(x == y for x, y in zip(results["sequential"]["texts"], results["batched"]["texts"], strict=True))
    ratio = results["batched"]["tokens_per_s"] / results["sequential"]["tokens_per_s"]
    print(f"batched/sequential tokens/s = {ratio:.2f}x; identical greedy outputs: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
