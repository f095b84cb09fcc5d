"""Decontamination: no evaluation prompt (or answer) may leak into training data.

Two tests, as in the GPT-3 / Llama reports: any shared word 13-gram with an evaluation prompt or answer, and a
near-duplicate (MinHash Jaccard) of an evaluation prompt, which also catches short prompts and light edits. A
short answer ("Yes.", "42") is not matched whole: a training turn that says the same is not a leak.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sftlab.curate.filter.dedup import NearDuplicateIndex, sketch
from sftlab.textutil import ngrams, normalize, words


class Overlap(NamedTuple):
    """Why a record is contaminated: the category counted in the funnel, and which eval text it overlaps."""

    reason: str
    detail: str


class Decontaminator:
    def __init__(self, eval_texts: Sequence[str], n: int = 13, near_threshold: float | None = 0.8,
                 num_perm: int = 128, answers: Sequence[str] = ()) -> None:
        """`eval_texts`: the evaluation prompts; `answers`: their answers (n-grams only)."""
        self.n = n
        self.grams: set[str] = {g for t in answers for g in ngrams(words(t), n)}
        self.short: set[str] = set()  # eval prompts with fewer than n words: matched whole
        for t in eval_texts:
            toks = words(t)
            if len(toks) >= n:
                self.grams.update(ngrams(toks, n))
            elif toks:
                self.short.add(" ".join(toks))
        self.index = None
        if near_threshold is not None and eval_texts:
            self.index = NearDuplicateIndex(near_threshold, num_perm)
            for i, (sig, sh) in enumerate(zip(*sketch(eval_texts, num_perm), strict=True)):
                self.index.insert(i, sig, sh)
        self.eval_texts = list(eval_texts)

    def check(self, prompt: str, response: str = "", sketched=None) -> str | None:
        """A reason naming the eval example it overlaps, or None when clean."""
        hit = self.find(prompt, response, sketched)
        return hit.detail if hit else None

    def find(self, prompt: str, response: str = "", sketched=None, turns: Sequence[str] = ()) -> Overlap | None:
        """The first overlap with an eval example (n-gram, whole short prompt, near-duplicate prompt), or None.
        `turns`: the prompt's user turns, each also compared whole with the short eval texts (a system prompt or
        earlier turns in front of an eval question must not hide it)."""
        for field, text in (("prompt", prompt), ("response", response)):
            toks = words(text)
            if self.grams and len(toks) >= self.n:
                for g in ngrams(toks, self.n):
                    if g in self.grams:
                        reason = f"{self.n}-gram overlap with an eval example"
                        return Overlap(reason, f"{reason} ({field}: '{g[:60]}')")
            if field == "prompt" and any(" ".join(t) in self.short for t in [toks, *map(words, turns)]):
                return Overlap(f"{field} equals an eval example", f"{field} equals an eval example")
        if self.index is not None:
            sig, sh = sketched or next(zip(*sketch([prompt]), strict=True))
            hit = self.index.query(sig, sh)
            if hit is not None:
                reason = f"near-duplicate of eval example {hit}"
                return Overlap(reason, f"{reason}: '{normalize(self.eval_texts[hit])[:60]}'")
        return None
