"""The filter's quality scorers judged against human labels: ROC AUC of each scorer on labelled (KTO) answers."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from sftlab.data.loading import load_conversations, make_spec
from sftlab.data.schema import Conversation
from sftlab.data.shipped import last_prompt
from sftlab.data.writers import write_json
from sftlab.errors import ConfigError, DataError
from sftlab.recipe.preparers.pools import QUICK_RECORDS

AUC_SCORERS = ("heuristics", "length", "perplexity", "ifd", "judge", "judge_logprob", "rubric", "rubric_reference",
               "yes_no")
JUDGES = ("rubric", "rubric_reference", "yes_no")  # the evaluation's judges: each answer graded alone


def _label(rec: Any, source: str, location: str) -> bool:
    if isinstance(rec, DataError):
        raise DataError(rec.message, source=source, record=location, reason=rec.reason)
    label = rec.get("label")
    if not isinstance(label, bool) and label not in (0, 1):
        raise DataError(f"expected a boolean `label` (desirable or not), got {label!r}", source=source,
                        record=location, field="label")
    return bool(label)


def labelled_responses(source: str | dict[str, Any], max_records: int | None = None, quick: bool = False,
                       seed: int = 0) -> tuple[list[Conversation], list[bool]]:
    """Responses with a human `label` (desirable or not), e.g. KTO data; quick: a few of each label."""
    from sftlab.data.readers import read_records

    spec = make_spec(source, "scorer_auc source")
    if max_records:
        spec = spec.model_copy(update={"max_records": max_records})
    convs, report = load_conversations(spec)
    labels_at = {loc: _label(rec, report.source, loc)
                 for loc, rec in read_records(spec.path, type=spec.type, split=spec.split, query=spec.query)}
    labels = [labels_at[c.meta["location"]] for c in convs]
    if len(set(labels)) < 2:
        raise DataError(f"all {len(labels)} loaded records have label {labels[:1]}: an AUC needs both labels",
                        source=report.source, field="label", reason="one label only")
    if quick:
        keep = sorted(i for want in (True, False) for i in random.Random(seed).sample(
            [i for i, y in enumerate(labels) if y == want], min(QUICK_RECORDS // 2, labels.count(want))))
        convs, labels = [convs[i] for i in keep], [labels[i] for i in keep]
    return convs, labels


def _oriented(values: list[float | None], higher_is_better: bool) -> tuple[list[float], int]:
    """Scores where higher means better; an unscored response (e.g. past max_length) ranks below all the others."""
    sign = 1.0 if higher_is_better else -1.0
    finite = [sign * v for v in values if v is not None]
    floor = min(finite, default=0.0) - 1.0
    return [sign * v if v is not None else floor for v in values], sum(v is None for v in values)


def _quality_scores(name: str, convs: list[Conversation], model: str, max_length: int,
                    shared: dict[str, Any]) -> tuple[list[float | None], bool, int | None]:
    """One scorer's raw scores, whether higher is better, and its unparseable judgements (judge only). `shared`
    keeps the scoring model and its perplexity/IFD pass for the scorers after the first."""
    from sftlab.curate.filter.heuristics import HeuristicSettings, check
    from sftlab.curate.filter.scorers import Scorer, ScorerSettings, perplexity_and_ifd
    from sftlab.models.loading import load_lm

    if name == "heuristics":
        rules = HeuristicSettings()
        return [0.0 if check(last_prompt(c), c.last_response or "", rules) else 1.0 for c in convs], True, None
    if name == "length":
        return [float(len(c.last_response or "")) for c in convs], True, None
    if name in (*JUDGES, "ifd", "perplexity") and "lm" not in shared:
        shared["lm"] = load_lm(model)  # loaded once for all of them
    if name in JUDGES:
        from sftlab.evaluate.judge import RubricJudge

        prompts = [last_prompt(c) for c in convs]
        refs = _own_answers(shared["lm"], prompts) if name == "rubric_reference" else None
        judge = RubricJudge(*shared["lm"], scale="yes_no" if name == "yes_no" else "rubric", max_length=max_length,
                            references=refs)
        return judge.grade_many([(p, c.last_response or "") for p, c in zip(prompts, convs, strict=True)]), True, None
    settings = ScorerSettings(type=name, model=model, max_length=max_length, batch_size=4)
    if name in ("ifd", "perplexity"):  # one pass gives both: IFD = conditional NLL / NLL of the reply alone
        if name not in shared:
            shared["perplexity"], shared["ifd"] = perplexity_and_ifd(*shared["lm"], convs, max_length, batch_size=4)
        return shared[name], settings.higher_is_better, None
    scorer = Scorer(settings)
    values = scorer.score(convs)
    return values, settings.higher_is_better, getattr(scorer._state, "unparseable", None)


def _own_answers(lm: tuple[Any, Any], prompts: list[str], max_new_tokens: int = 256) -> dict[str, str]:
    """The scoring model's own greedy answer to each prompt: the reference of reference-guided grading."""
    from sftlab.generation.base import SamplingParams, as_messages
    from sftlab.generation.transformers_backend import TransformersGenerator

    replies = TransformersGenerator(*lm, batch_size=8).generate([as_messages(p) for p in prompts],
                                                                 SamplingParams(max_new_tokens=max_new_tokens))
    return {p: r[0].text for p, r in zip(prompts, replies, strict=True)}


def scorer_auc(out: Path, *, seed: int = 0, quick: bool = False, source: str | dict[str, Any], scorers: list[str],
               model: str, max_length: int = 1536, max_records: int | None = None) -> dict[str, Any]:
    """How well each quality scorer separates desirable from undesirable responses: ROC AUC (0.5 chance, 1 perfect)
    per scorer and for the mean percentile rank of the model-based ones; also written to `auc.json`."""
    import time

    from sklearn.metrics import roc_auc_score

    from sftlab.curate.filter.scorers import percentile_ranks

    unknown = [s for s in scorers if s not in AUC_SCORERS]
    if unknown or not scorers:
        raise ConfigError(f"scorers {unknown or scorers}: choose one or more of {', '.join(AUC_SCORERS)}")
    convs, labels = labelled_responses(source, max_records, quick, seed)
    max_length = min(max_length, 256) if quick else max_length
    scores: dict[str, list[float]] = {}
    seconds, unscored, unparseable = {}, {}, {}
    shared: dict[str, Any] = {}  # the scoring model and its perplexity/IFD pass, made once
    for name in scorers:
        t = time.time()
        raw, higher_is_better, bad_judgements = _quality_scores(name, convs, model, max_length, shared)
        scores[name], missing = _oriented(raw, higher_is_better)
        seconds[name] = round(time.time() - t, 1)
        if missing:
            unscored[name] = missing
        if bad_judgements is not None:
            unparseable[name] = bad_judgements
    model_based = [k for k in scores if k not in ("heuristics", "length")]
    if len(model_based) > 1:
        ranks = [percentile_ranks(scores[k]) for k in model_based]
        scores["combined(" + "+".join(model_based) + ")"] = [sum(x) / len(ranks) for x in zip(*ranks, strict=True)]
    result = {"data": make_spec(source).path, "n": len(labels), "desirable": sum(labels), "model": model,
              "auc": {k: round(float(roc_auc_score(labels, v)), 4) for k, v in scores.items()}, "seconds": seconds,
              "unparseable": unparseable, "unscored": unscored}
    write_json(Path(out) / "auc.json", result)
    return result
