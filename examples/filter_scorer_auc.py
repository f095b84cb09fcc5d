"""How well does each quality scorer separate good from bad responses? ROC AUC on labelled data.

Data: ../shared/data/kto_en_demo.json (150 desirable, 150 undesirable responses, OpenAI messages + `label`).
Each scorer gives every response a score oriented so that higher means better; AUC 0.5 is chance, 1.0 perfect.

    python examples/filter_scorer_auc.py --out runs/kto-auc                  # all scorers, SmolLM2 as the LM
    python examples/filter_scorer_auc.py --scorers heuristics,ifd --max-records 60
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sklearn.metrics import roc_auc_score

from sftlab.curate.filter.heuristics import HeuristicSettings, check
from sftlab.curate.filter.scorers import Scorer, ScorerSettings, percentile_ranks, perplexity_and_ifd
from sftlab.data.loading import DataSpec, load_conversations
from sftlab.data.writers import write_json


def lm_nll(convs, model_name: str, max_length: int) -> dict[str, list[float | None]]:
    """Perplexity and IFD from one pass over the data (IFD's numerator is the perplexity score)."""
    from sftlab.models.loading import load_lm

    ppl, ifd = perplexity_and_ifd(*load_lm(model_name), convs, max_length, batch_size=4)
    return {"perplexity": ppl, "ifd": ifd}


def orient(out: list[float | None], sign: float, name: str) -> list[float]:
    finite = [sign * v for v in out if v is not None]
    missing = sum(v is None for v in out)
    if missing:  # e.g. the response fell past max_length: ranked worst, and said so
        print(f"{name}: {missing} responses could not be scored (ranked lowest)")
    return [sign * v if v is not None else min(finite, default=0.0) - 1.0 for v in out]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/kto_en_demo.json")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="LM for ifd/perplexity and the judge")
    ap.add_argument("--scorers", default="heuristics,length,perplexity,ifd,judge,judge_logprob")
    ap.add_argument("--max-records", type=int, default=None)
    ap.add_argument("--max-length", type=int, default=1536)
    ap.add_argument("--out", type=Path, default=Path("runs/kto-auc"))
    args = ap.parse_args()

    raw = json.loads(Path(args.data).read_text(encoding="utf-8"))[: args.max_records]
    convs, _ = load_conversations(DataSpec(path=args.data, max_records=args.max_records))
    labels = [bool(r["label"]) for r in raw]
    assert len(convs) == len(labels), "every labelled record must load"
    print(f"{len(convs)} responses: {sum(labels)} desirable, {len(labels) - sum(labels)} undesirable")

    scores: dict[str, list[float]] = {}
    lm_scores: dict[str, list[float | None]] = {}
    unparseable: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for name in args.scorers.split(","):
        t = time.time()
        if name == "heuristics":
            s = HeuristicSettings()
            vals = [0.0 if check(c.prompt_turns[-1].content, c.last_response or "", s) else 1.0 for c in convs]
        elif name == "length":
            vals = [float(len(c.last_response or "")) for c in convs]
        elif name in ("ifd", "perplexity"):  # one pass gives both: IFD = conditional NLL / NLL of the reply alone
            if "perplexity" not in lm_scores:
                lm_scores.update(lm_nll(convs, args.model, args.max_length))
            settings = ScorerSettings(type=name, model=args.model)
            out = lm_scores[name]
            sign = 1.0 if settings.higher_is_better else -1.0
            vals = orient(out, sign, name)
        else:
            settings = ScorerSettings(type=name, model=args.model, max_length=args.max_length, batch_size=4)
            scorer = Scorer(settings)
            out = scorer.score(convs)
            judge = scorer._state
            if hasattr(judge, "unparseable"):
                print(f"{name}: {judge.unparseable} of {judge.judged} judgements unparseable (scored as the fallback)")
                unparseable[name] = judge.unparseable
            sign = 1.0 if settings.higher_is_better else -1.0
            vals = orient(out, sign, name)
        scores[name] = vals
        seconds[name] = round(time.time() - t, 1)
        print(f"{name:<11} AUC {roc_auc_score(labels, vals):.3f}   ({seconds[name]} s)")
    model_scores = [k for k in scores if k not in ("heuristics", "length")]
    if len(model_scores) > 1:
        combined = [sum(x) / len(model_scores) for x in zip(*(percentile_ranks(scores[k]) for k in model_scores),
                                                             strict=True)]
        scores["combined(" + "+".join(model_scores) + ")"] = combined
        print(f"combined    AUC {roc_auc_score(labels, combined):.3f}")
    result = {"data": args.data, "n": len(labels), "desirable": sum(labels), "model": args.model,
              "auc": {k: round(float(roc_auc_score(labels, v)), 4) for k, v in scores.items()}, "seconds": seconds,
              "unparseable": unparseable}
    write_json(args.out / "auc.json", result)
    print(json.dumps(result["auc"], indent=2))


if __name__ == "__main__":
    main()
