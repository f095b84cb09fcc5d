"""Decontamination: no evaluation prompt (or answer) may leak into training data.

Two tests, as in the GPT-3 / Llama reports: any shared word 13-gram with an evaluation example, and a
near-duplicate (MinHash Jaccard) of an evaluation prompt, which also catches short prompts and light edits.
"""

from __future__ import annotations

from collections.abc import Sequence

from sftlab.curate.filter.dedup import NearDuplicateIndex, sketch
from sftlab.textutil import ngrams, normalize, words


class Decontaminator:
    def __init__(self, eval_texts: Sequence[str], n: int = 13, near_threshold: float | None = 0.8,
                 num_perm: int = 128) -> None:
        self.n = n
        self.grams: set[str] = set()
        self.short: set[str] = set()  # eval texts with fewer than n words: matched whole
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
        for field, text in (("prompt", prompt), ("response", response)):
            toks = words(text)
            if self.grams and len(toks) >= self.n:
                for g in ngrams(toks, self.n):
                    if g in self.grams:
                        return f"{self.n}-gram overlap with an eval example ({field}: '{g[:60]}')"
            if field == "prompt" and " ".join(toks) in self.short:
                return f"{field} equals an eval example"
        if self.index is not None:
            sig, sh = sketched or next(zip(*sketch([prompt]), strict=True))
            hit = self.index.query(sig, sh)
            if hit is not None:
                return f"near-duplicate of eval example {hit}: '{normalize(self.eval_texts[hit])[:60]}'"
        return None
