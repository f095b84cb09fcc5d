"""How well does each quality scorer separate good from bad responses? ROC AUC on labelled data.

Data: ../shared/data/kto_en_demo.json (150 desirable, 150 undesirable responses, OpenAI messages + `label`).
Each scorer gives every response a score oriented so that higher means better; AUC 0.5 is chance, 1.0 perfect.
The measurement is the recipe preparer `scorer_auc` (sftlab.recipe.preparers.pools); this script calls it.

    python examples/filter_scorer_auc.py --out runs/kto-auc                  # all scorers, SmolLM2 as the LM
    python examples/filter_scorer_auc.py --scorers heuristics,ifd --max-records 60
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sftlab.recipe.preparers.scorer_auc import scorer_auc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/kto_en_demo.json")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="LM for ifd/perplexity and the judge")
    ap.add_argument("--scorers", default="heuristics,length,perplexity,ifd,judge,judge_logprob")
    ap.add_argument("--max-records", type=int, default=None)
    ap.add_argument("--max-length", type=int, default=1536)
    ap.add_argument("--out", type=Path, default=Path("runs/kto-auc"))
    args = ap.parse_args()

    result = scorer_auc(args.out, source=args.data, scorers=args.scorers.split(","), model=args.model,
                        max_length=args.max_length, max_records=args.max_records)
    print(f"{result['n']} responses: {result['desirable']} desirable, {result['n'] - result['desirable']} undesirable")
    for name, missing in result["unscored"].items():
        print(f"{name}: {missing} responses could not be scored (ranked lowest)")
    for name, bad in result["unparseable"].items():
        print(f"{name}: {bad} judgements unparseable (scored as the fallback)")
    for name, auc in result["auc"].items():
        print(f"{name:<11} AUC {auc:.3f}   ({result['seconds'].get(name, '-')} s)")
    print(f"written: {args.out / 'auc.json'}")
    print(json.dumps(result["auc"], indent=2))


if __name__ == "__main__":
    main()
