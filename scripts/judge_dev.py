"""Choose the demo's judge on training prompts, never on the held-out set: can it tell an answer from a non-answer?

For 40 prompts of the shipped general training data, the teacher's answer (good by construction: distilled and
filtered) is paired with the base student's greedy reply (it echoes the request until the token budget, marked as
cut off, as the demo shows the judge). Each single-answer judge scale grades both; the share of pairs where the
teacher's answer wins by more than the scale's tie margin is that judge's separation. The agreement with people
(ROC AUC on kto_en_demo.json) is measured by examples/filter_scorer_auc.py.

    .venv/bin/python scripts/judge_dev.py      # about 6 min on 2 CPU cores

Writes data/demo/judge_dev_results.json.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from sftlab.data.shipped import last_prompt, shipped_training_sets
from sftlab.data.writers import write_json
from sftlab.evaluate.judge import RubricJudge, pairwise_winrate
from sftlab.evaluate.runner import judged_text
from sftlab.generation.base import SamplingParams, as_messages
from sftlab.generation.factory import build_generator
from sftlab.models.loading import load_lm

ROOT = Path(__file__).resolve().parents[1]
N_PROMPTS, BUDGET = 40, 128  # the demo's generation budget


def main() -> None:
    _, general = shipped_training_sets("Orca", "the sftlab team")
    convs = random.Random(0).sample(general, N_PROMPTS)
    prompts, good = [last_prompt(c) for c in convs], [c.last_response or "" for c in convs]
    base = build_generator("gemma-3-270m", batch_size=16)
    replies = base.generate([as_messages(p) for p in prompts], SamplingParams(max_new_tokens=BUDGET))
    bad = [judged_text(r[0]) for r in replies]
    lm = load_lm("qwen2.5-coder-1.5b-instruct")
    rows = []
    for scale in ("rubric", "yes_no"):
        t0 = time.time()
        r = pairwise_winrate(RubricJudge(*lm, scale=scale), prompts, good, bad, labels=("teacher", "base"))
        rows.append({"scale": scale, "n": r["n"], "teacher_wins": r["teacher_win_rate"], "ties": r["tie_rate"],
                     "base_wins": r["base_win_rate"], "seconds": round(time.time() - t0)})
        print(rows[-1], flush=True)
    write_json(ROOT / "data" / "demo" / "judge_dev_results.json", {"prompts": N_PROMPTS, "rows": rows})


if __name__ == "__main__":
    main()
