"""Best-of-k / rejection sampling: sample k replies from the policy, score them, keep the best."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from sftlab.curate.rewards import RewardFn
from sftlab.curate.runner import CurationRun, PromptItem, RunStats, output_record, prompt_items
from sftlab.data.schema import Conversation
from sftlab.errors import ConfigError, SftlabError
from sftlab.generation.base import Generation, Generator, SamplingParams
from sftlab.generation.cache import GenerationCache

SELECT = ("best", "all")


def best_of_k_settings(generator_id: str, params: SamplingParams, reward_id: str, select: str = "best",
                       min_score: float | None = None, system_prompt: str | None = None,
                       keep_unfinished: bool = False) -> dict[str, Any]:
    """Everything that changes a best-of-k output: a resumed run must have exactly these. Refuses bad options."""
    if select not in SELECT:
        raise ConfigError(f"select {select!r}: must be one of {', '.join(SELECT)}")
    if min_score is not None and not math.isfinite(min_score):
        raise ConfigError(f"min_score {min_score}: must be a finite number")
    system = {"system_prompt": system_prompt} if system_prompt else {}  # earlier outputs (none) still resume
    unfinished = {"keep_unfinished": True} if keep_unfinished else {}
    return {"pipeline": "best_of_k", "generator": generator_id, "reward": reward_id, "select": select,
            "min_score": min_score, **system, **unfinished, **params.to_dict()}


def best_of_k(prompts: list[Conversation], policy: Generator, reward: RewardFn, out_path: str | Path,
              params: SamplingParams, reward_name: str = "reward", select: Literal["best", "all"] = "best",
              min_score: float | None = None, cache: GenerationCache | None = None, batch_size: int = 8,
              console: Console | None = None, generator_id: str | None = None, reward_id: str | None = None,
              inputs: Iterable[str | Path] = (), system_prompt: str | None = None,
              keep_unfinished: bool = False) -> RunStats:
    """Keep, per prompt, the best sample (select="best") or every sample (select="all") whose score is at
    least `min_score` (no threshold: the best is always kept). A prompt with no acceptable sample gives no
    record and is counted. A sample that hit max_new_tokens is scored but never kept (counted) unless
    `keep_unfinished`: a cut-off reply may still hold the right number. Reports mean reward, pass@1 and pass@k
    (success = a sample that may be kept and scores >= min_score, or > 0).
    `generator_id`/`reward_id` name the policy's and the reward's versions (default model_id / reward_name)."""
    gid = generator_id or policy.model_id
    settings = best_of_k_settings(gid, params, reward_id or reward_name, select, min_score, system_prompt,
                                  keep_unfinished)
    run = CurationRun(policy, params, out_path, cache, batch_size, console, settings=settings, generator_id=gid,
                      inputs=inputs, n_name="k")
    scores_all: list[list[float]] = []
    successes: list[list[bool]] = []  # per prompt, per sample: one that would be kept on its score
    hist: Counter = Counter()
    passes = (lambda s: s >= min_score) if min_score is not None else (lambda s: s > 0)

    def handle(item: PromptItem, gens: list[Generation]) -> list[dict]:
        pairs = [(item.messages, g.text_with_calls) for g in gens]  # a structured call as the template shows it
        if hasattr(reward, "score_many"):
            scores = list(reward.score_many(pairs))  # batched judges / reward models
        else:
            scores = [float(reward(item.messages, text, item.reference)) for _, text in pairs]
        bad = next((s for s in scores if not math.isfinite(s)), None)
        if bad is not None:  # NaN ranks anywhere and is not JSON: a broken reward, not a score
            raise SftlabError(f"reward '{reward_name}' gave {bad} for prompt {item.source_id}: a reward must be a "
                              "finite number (the prompts done so far are kept; fix the reward and re-run to resume)")
        scores_all.append(scores)
        successes.append([passes(s) and (g.finished or keep_unfinished) and not g.tool_call_error
                          for s, g in zip(scores, gens, strict=True)])
        for s in scores:
            hist[round(s, 1)] += 1
        ranked = sorted(range(len(gens)), key=lambda j: -scores[j])
        invalid = [j for j in ranked if gens[j].tool_call_error]  # never kept: its record would not validate
        unfinished = [j for j in ranked if not gens[j].finished and not keep_unfinished and j not in invalid]
        if invalid:
            run.stats.skipped["invalid tool call"] += len(invalid)
        if unfinished:
            run.stats.skipped["reply hit max_new_tokens"] += len(unfinished)
        ok = [j for j in ranked if j not in unfinished and j not in invalid
              and (min_score is None or scores[j] >= min_score)]
        keep = ok[:1] if select == "best" else ok
        if not keep:
            run.stats.skipped["no acceptable sample"] += 1
        return [output_record(item, gens[j], policy, params, j, pipeline="best_of_k", reward=reward_name,
                              score=scores[j], rank=rank, k=len(gens), all_scores=scores, reference=item.reference)
                for rank, j in enumerate(keep)]

    stats = run.run(prompt_items(prompts, system_prompt), handle, getattr(policy, "encode", None))
    flat = [s for ss in scores_all for s in ss]
    stats.extra = {
        "k": params.n, "reward": reward_name, "min_score": min_score,
        "mean_reward": round(sum(flat) / len(flat), 4) if flat else None,
        "pass@1": round(sum(sum(ok) / len(ok) for ok in successes) / len(successes), 4) if successes else None,
        f"pass@{params.n}": round(sum(map(any, successes)) / len(successes), 4) if successes else None,
        "prompts_without_acceptable_sample": stats.skipped.get("no acceptable sample", 0),
        "reward_histogram": {str(k): v for k, v in sorted(hist.items())},
    }
    if hasattr(reward, "unparseable"):
        stats.extra["unparseable_judgements"] = reward.unparseable
    return stats
