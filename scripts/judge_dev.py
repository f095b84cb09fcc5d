"""Choose the judge on training prompts, never on the held-out set: can it tell an answer from a non-answer?

For 40 prompts of the shipped general training data, the teacher's answer (good by construction: distilled and
filtered) is paired with a bad reply, one per probe:
- echo: the base student's greedy reply (it echoes the request until the token budget, marked as cut off, as the
  demo shows the judge);
- runon: the teacher's own answer repeated until it is cut off at the budget and marked so (the length-biased
  judge's trap: a long, repetitive answer that never ends; the distillation recipe's 135M-taught student).
Each single-answer judge grades both; the share of pairs where the teacher's answer wins by more than the judge's
tie margin is that judge's separation. The agreement with people (ROC AUC on kto_en_demo.json) is measured by
examples/filter_scorer_auc.py.

    .venv/bin/python scripts/judge_dev.py     # all judges and probes: about 65 min on 2 cores in fp32, 43 critiquing
    .venv/bin/python scripts/judge_dev.py --judges critique --probes runon

Writes (merges its rows into) data/demo/judge_dev_results.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from sftlab.data.shipped import last_prompt, shipped_training_sets
from sftlab.data.writers import write_json
from sftlab.evaluate.judge import CUT_OFF, CritiqueJudge, RubricJudge, pairwise_winrate
from sftlab.evaluate.runner import judged_text
from sftlab.generation.base import GENERATION_BATCH, SamplingParams, as_messages
from sftlab.generation.factory import build_generator
from sftlab.generation.transformers_backend import TransformersGenerator
from sftlab.models.loading import load_lm

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "data" / "demo" / "judge_dev_results.json"
N_PROMPTS, BUDGET, RUNON_CHARS = 40, 128, 600  # the demo's generation budget; about 128 tokens of English
JUDGES = {"rubric": lambda lm: RubricJudge(*lm), "yes_no": lambda lm: RubricJudge(*lm, scale="yes_no"),
          "critique": lambda lm: CritiqueJudge(TransformersGenerator(*lm, batch_size=GENERATION_BATCH))}


def echoes(prompts: list[str]) -> list[str]:
    """The base student's replies, as the demo's judge reads them."""
    base = build_generator("gemma-3-270m", batch_size=GENERATION_BATCH)
    return [judged_text(r[0]) for r in base.generate([as_messages(p) for p in prompts],
                                                     SamplingParams(max_new_tokens=BUDGET))]


def run_on(answer: str) -> str:
    """The answer said again and again until the budget cuts it off."""
    text = answer
    while len(text) < RUNON_CHARS:
        text += "\n\n" + answer
    return text[:RUNON_CHARS] + CUT_OFF


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--judges", default=",".join(JUDGES))
    ap.add_argument("--probes", default="echo,runon")
    args = ap.parse_args()
    _, general = shipped_training_sets("Orca", "the sftlab team")
    convs = random.Random(0).sample(general, N_PROMPTS)
    prompts, good = [last_prompt(c) for c in convs], [c.last_response or "" for c in convs]
    probes = args.probes.split(",")
    bad = {"runon": [run_on(g) for g in good], **({"echo": echoes(prompts)} if "echo" in probes else {})}
    lm = load_lm("qwen2.5-coder-1.5b-instruct")
    old = json.loads(RESULTS.read_text())["rows"] if RESULTS.exists() else []
    for r in old:  # rows written before the runon probe: echo only, its bad reply labelled base
        r.setdefault("probe", "echo")
        r.setdefault("bad_wins", r.pop("base_wins", None))
    rows = {(r["probe"], r["scale"]): r for r in old}
    for name in args.judges.split(","):
        judge = JUDGES[name](lm)  # one judge for both probes: the teacher's answers are graded once
        for probe in probes:
            t0 = time.time()
            r = pairwise_winrate(judge, prompts, good, bad[probe], labels=("teacher", probe))
            rows[probe, name] = {"probe": probe, "scale": name, "n": r["n"], "teacher_wins": r["teacher_win_rate"],
                                 "ties": r["tie_rate"], "bad_wins": r[f"{probe}_win_rate"],
                                 "unparseable": r["unparseable"], "seconds": round(time.time() - t0)}
            print(rows[probe, name], flush=True)
    write_json(RESULTS, {"prompts": N_PROMPTS, "rows": list(rows.values())})


if __name__ == "__main__":
    main()
