"""Model-based quality scores, pluggable and combinable.

- `ifd`: instruction-following difficulty (Cherry LLM) = NLL(response | prompt) / NLL(response alone) under a
  small LM. Near or above 1 the prompt does not help predict the response (unrelated or swapped answers);
  lower is better as a quality signal.
- `perplexity`: mean NLL(response | prompt); lower is better (fluent, expected text).
- `judge`: an instruct model rates the response 1-10 on a rubric (generated, parsed); higher is better.
- `judge_logprob`: the same rubric read from the judge's next-token probabilities over the digits 1-9 after
  "Rating: " (expected value, G-Eval style): one forward pass, never unparseable, works with small local judges.
- `reward_model`: a sequence-classification reward model's score; higher is better.
- `custom`: `module:function(prompt, response, record) -> float`, higher is better.

Scores are cached per (scorer, record) in SQLite, so a crashed or repeated run does not pay twice.
`combine` turns each score into a percentile rank in its better-is-higher direction and takes the weighted
mean: scores on different scales mix without tuning.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sftlab.data.schema import Conversation, Turn
from sftlab.kvstore import SqliteKV, stable_key


class ScorerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["ifd", "perplexity", "judge", "judge_logprob", "reward_model", "custom"]
    label: str | None = Field(None, description="Score name in outputs; default the type (custom: the function).")
    model: str | None = Field(None, description="Scoring model (ifd, perplexity, judge) or reward model path.")
    function: str | None = Field(None, description="module:function for type custom.")
    base_url: str | list[str] | None = Field(None, description="OpenAI-compatible endpoint for the judge; a "
                                                               "list: several serving it, least-loaded first.")
    weight: float = Field(1.0, ge=0, description="Weight of this score in the combined quality.")
    max_length: int = Field(1024, ge=16, description="Tokens of a record the scorer reads at most.")
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Scoring LM weights' dtype (ifd, perplexity, judge_logprob); auto: bf16 where it is fast.")
    batch_size: int = Field(8, ge=1, description="Records scored per forward pass.")

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return self.function.rsplit(":", 1)[-1] if self.type == "custom" and self.function else self.type

    @property
    def higher_is_better(self) -> bool:
        return self.type not in ("ifd", "perplexity")


class ScoreCache(SqliteKV):
    """Scores by (scorer, record) key; every chunk is committed, so a killed run resumes where it stopped."""

    def __init__(self, path) -> None:
        super().__init__(path, "score")


def ifd_examples(tok, convs: list[Conversation], max_length: int):
    """(response given its prompt, response alone) as (input_ids, labels) pairs, for NLL scoring."""
    from sftlab.templates.literal import encode_text
    from sftlab.templates.masking import tokenize_conversation

    cond, alone = [], []
    for c in convs:
        ex = tokenize_conversation(tok, c, "last", max_length, "truncate", verify=False)
        cond.append((ex.input_ids, ex.labels) if ex else ([0], [-100]))
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        ids = (bos + encode_text(tok, c.last_response or ""))[:max_length]
        alone.append((ids, [-100] * len(bos) + ids[len(bos):]))
    return cond, alone


def perplexity_and_ifd(model, tok, convs: list[Conversation], max_length: int = 1024, batch_size: int = 8,
                       with_ifd: bool = True) -> tuple[list[float | None], list[float | None]]:
    """Conditional response NLL and IFD = conditional / unconditional NLL (None where undefined), one pass each."""
    from sftlab.models.scoring import pad_id_of, per_example_nll

    cond, alone = ifd_examples(tok, convs, max_length)
    c = per_example_nll(model, cond, pad_id_of(tok), batch_size)
    if not with_ifd:
        return c, [None] * len(c)
    a = per_example_nll(model, alone, pad_id_of(tok), batch_size)
    return c, [None if x is None or y is None or y == 0 else x / y for x, y in zip(c, a, strict=True)]


class Scorer:
    """Scores a batch of conversations (prompt turns + last response); None where a score is undefined."""

    def __init__(self, settings: ScorerSettings) -> None:
        self.s = settings
        self._state: Any = None

    @property
    def cache_id(self) -> str:
        import torch

        from sftlab.models.loading import resolve_dtype

        dtype = "bf16" if resolve_dtype(self.s.dtype) == torch.bfloat16 else "fp32"  # "auto" as resolved here
        return stable_key(self.s.type, self.s.model, self.s.function, self.s.max_length, dtype)

    def _load(self):
        if self._state is not None:
            return self._state
        s = self.s
        if s.type in ("ifd", "perplexity", "judge_logprob"):
            from sftlab.models.loading import load_lm

            self._state = load_lm(s.model or "smollm2-135m-instruct", s.dtype)
        elif s.type == "judge":
            from sftlab.curate.rewards import make_reward

            self._state = make_reward("judge", judge=s.model or "smollm2-135m-instruct", base_url=s.base_url,
                                      batch_size=s.batch_size)
        elif s.type == "reward_model":
            from sftlab.curate.rewards import make_reward

            if not s.model:
                raise ValueError("scorer reward_model needs `model`: a sequence-classification model folder")
            self._state = make_reward(f"reward_model:{s.model}", batch_size=s.batch_size)
        elif s.type == "custom":
            from sftlab.userfn import import_callable

            if not s.function:
                raise ValueError("scorer custom needs `function: module:function`")
            self._state = import_callable(s.function, "scorer")
        return self._state

    def score(self, convs: list[Conversation]) -> list[float | None]:
        from sftlab.generation.base import as_messages

        state = self._load()
        if self.s.type in ("ifd", "perplexity"):
            ppl, ifd = perplexity_and_ifd(*state, convs, self.s.max_length, self.s.batch_size,
                                          with_ifd=self.s.type == "ifd")
            return ifd if self.s.type == "ifd" else ppl
        if self.s.type == "judge_logprob":
            model, tok = state
            return logprob_ratings(model, tok, convs, self.s.max_length, self.s.batch_size)
        if self.s.type in ("judge", "reward_model"):
            return state.score_many([(as_messages(c), c.last_response or "") for c in convs])
        return [None if (v := state(c.prompt_turns[-1].content if c.prompt_turns else "", c.last_response or "",
                                    c.to_dict())) is None else float(v) for c in convs]


RUBRIC_9 = ("You are grading an assistant's answer. Rate it from 1 (useless or wrong) to 9 (correct, helpful, "
            "clear) for the user's request.\n\nRequest:\n{prompt}\n\nAnswer:\n{response}\n\n"
            "Reply with the rating only, as: Rating: <1-9>")


def logprob_ratings(model, tok, convs: list[Conversation], max_length: int = 1024,
                    batch_size: int = 8) -> list[float | None]:
    """Expected rating sum(p(d) * d) over the digit tokens 1-9 at the position after "Rating: "."""
    import torch

    from sftlab.models.scoring import next_token_probs, pad_id_of, single_token_ids
    from sftlab.templates.masking import chat_ids

    digit_ids = single_token_ids(tok, [str(d) for d in range(1, 10)], "judge_logprob")
    budget = max(64, max_length // 2) * 3  # characters per field: prompt and answer share the window
    rows = []
    for c in convs:
        prompt = (c.prompt_turns[-1].content if c.prompt_turns else "")[:budget]
        msgs = [{"role": "user", "content": RUBRIC_9.format(prompt=prompt, response=(c.last_response or "")[:budget])}]
        rows.append(chat_ids(tok, msgs, suffix="Rating: ")[-max_length:])  # special-token text stays text
    probs = next_token_probs(model, rows, digit_ids, pad_id_of(tok), batch_size)
    return [round(x, 4) for x in (probs @ torch.arange(1, 10, dtype=torch.float32)).tolist()]


def score_records(scorer: Scorer, convs: list[Conversation], keys: list[str], cache: ScoreCache | None,
                  chunk: int = 64, progress=None) -> list[float | None]:
    """Scores for every conversation, from the cache where present, computing the rest in cached chunks."""
    ckeys = [stable_key(scorer.cache_id, k) for k in keys]
    known = cache.get_many(ckeys) if cache else {}
    out: list[float | None] = [known.get(k) for k in ckeys]
    todo = [i for i, k in enumerate(ckeys) if k not in known]
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        vals = scorer.score([convs[i] for i in part])
        for i, v in zip(part, vals, strict=True):
            out[i] = v
        if cache:
            cache.put_many({ckeys[i]: v for i, v in zip(part, vals, strict=True)})
        if progress:
            progress(len(part))
    return out


def percentile_ranks(values: list[float | None], higher_is_better: bool = True) -> list[float]:
    """Each value's rank in [0, 1] (ties share their mean rank); None ranks 0."""
    present = sorted((v if higher_is_better else -v, i) for i, v in enumerate(values) if v is not None)
    ranks = [0.0] * len(values)
    n = len(present)
    j = 0
    while j < n:
        k = j
        while k + 1 < n and present[k + 1][0] == present[j][0]:
            k += 1
        r = ((j + k) / 2) / (n - 1) if n > 1 else 1.0
        for m in range(j, k + 1):
            ranks[present[m][1]] = r
        j = k + 1
    return ranks


def combine(scores: dict[str, list[float | None]], settings: list[ScorerSettings]) -> list[float]:
    """Weighted mean of percentile ranks (better = higher) over the scorers."""
    total = sum(s.weight for s in settings) or 1.0
    n = len(next(iter(scores.values()))) if scores else 0
    out = [0.0] * n
    for s in settings:
        for i, r in enumerate(percentile_ranks(scores[s.name], s.higher_is_better)):
            out[i] += s.weight * r / total
    return [round(x, 4) for x in out]


def as_conversation(prompt: str, response: str) -> Conversation:
    return Conversation(turns=[Turn("user", prompt), Turn("assistant", response)])
