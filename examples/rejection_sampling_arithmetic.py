"""Rejection sampling (best-of-k) then SFT, measured on held-out problems.

1. Make an arithmetic set (or use GSM8K train/test from ../shared/data with --gsm8k).
2. Greedy accuracy of the packaged SmolLM2-135M-Instruct on held-out problems (before).
3. `best_of_k`: sample k replies per train prompt, keep one whose final number is right.
4. SFT (LoRA) on the accepted replies: the model imitates its own correct reasoning.
5. Greedy accuracy on the same held-out problems (after).

    python examples/rejection_sampling_arithmetic.py --out runs/rs-arith
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from rich.console import Console

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def arithmetic(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        op = rng.choice(["+", "-", "*"])
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        rows.append({"question": f"What is {a} {op} {b}? Give the final answer as a number.",
                     "answer": f"{a} {op} {b} = {value}\n#### {value}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/rs-arith"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--train-prompts", type=int, default=256)
    ap.add_argument("--test-prompts", type=int, default=200)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--gsm8k", action="store_true", help="GSM8K train prompts / test problems instead")
    a = ap.parse_args()
    console = Console()
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from sftlab.evaluate.math import final_answer_accuracy

    from sftlab.curate.best_of_k import best_of_k
    from sftlab.curate.rewards import numeric_match
    from sftlab.data.loading import load_conversations
    from sftlab.data.writers import write_json, write_jsonl
    from sftlab.generation.base import SamplingParams
    from sftlab.generation.factory import load_transformers_generator
    from sftlab.models.loading import resolve_model_path
    from sftlab.train.config import make_config
    from sftlab.train.run import train

    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.gsm8k:
        train_rows = [json.loads(x) for x in (SHARED / "gsm8k/train.jsonl").read_text().splitlines()][: a.train_prompts]
        test_rows = [json.loads(x) for x in (SHARED / "gsm8k/test.jsonl").read_text().splitlines()][: a.test_prompts]
    else:
        train_rows, test_rows = arithmetic(a.train_prompts, 1), arithmetic(a.test_prompts, 2)
        test_q = {r["question"] for r in test_rows}
        train_rows = [r for r in train_rows if r["question"] not in test_q]
    write_jsonl(a.out / "train_prompts.jsonl", train_rows)
    write_jsonl(a.out / "test.jsonl", test_rows)
    train_convs = load_conversations(str(a.out / "train_prompts.jsonl"))[0]
    test_convs = load_conversations(str(a.out / "test.jsonl"))[0]

    path = resolve_model_path(a.model)
    gen = load_transformers_generator(path, batch_size=16, model_id=a.model)
    before = final_answer_accuracy(gen, test_convs, a.max_new_tokens)
    console.print(f"before: greedy accuracy {before['accuracy']} ({before['correct']}/{before['n']})")

    params = SamplingParams(max_new_tokens=a.max_new_tokens, temperature=0.8, top_p=0.95, n=a.k, seed=0)
    stats = best_of_k(train_convs, gen, numeric_match, a.out / "accepted.jsonl", params, reward_name="numeric",
                      min_score=1.0, batch_size=16, console=console)
    rs = stats.to_dict()
    console.print(f"best-of-{a.k}: {json.dumps({k: rs[k] for k in ('records_written', 'pass@1', f'pass@{a.k}')})}")

    cfg = make_config({"name": "rs", "model": a.model, "data": [str(a.out / "accepted.jsonl")], "method": "lora",
                       "epochs": a.epochs, "batch_size": 8, "grad_accum": 1, "learning_rate": 2e-4,
                       "output_dir": str(a.out / "train"), "save_steps": 1000, "seed": 0})
    result = train(cfg, overwrite=True, console=console)
    tuned = load_transformers_generator(path, adapter=str(result.final_dir), batch_size=16)
    after = final_answer_accuracy(tuned, test_convs, a.max_new_tokens)
    console.print(f"after:  greedy accuracy {after['accuracy']} ({after['correct']}/{after['n']})")
    summary = {"task": "gsm8k" if a.gsm8k else "arithmetic", "model": a.model, "k": a.k,
               "train_prompts": len(train_convs), "test_problems": len(test_convs), "best_of_k": rs,
               "before": {k: v for k, v in before.items() if k != "samples"},
               "after": {k: v for k, v in after.items() if k != "samples"}, "seconds": round(time.time() - t0)}
    write_json(a.out / "summary.json", summary)
    write_json(a.out / "samples.json", {"before": before["samples"][:20], "after": after["samples"][:20]})
    console.print_json(json.dumps(summary))


if __name__ == "__main__":
    main()
