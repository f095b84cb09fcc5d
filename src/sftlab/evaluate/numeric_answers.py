"""Final-answer accuracy on question/answer data (GSM8K `#### N` style or any numeric answer)."""

from __future__ import annotations

from typing import Any

from sftlab.data.schema import Conversation
from sftlab.evaluate.checks import wilson_interval
from sftlab.generation.base import Generator, SamplingParams, as_messages
from sftlab.textutil import extract_final_number


def final_answer_accuracy(generator: Generator, problems: list[Conversation], max_new_tokens: int = 256,
                          k: int = 1, temperature: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """Greedy accuracy (k=1, temperature 0) or pass@k with sampling; the reference is the last assistant turn.
    A problem whose reference has no number cannot be scored: left out of n and counted as `unscored`."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, n=k, seed=seed)
    outs = generator.generate([as_messages(c) for c in problems], params)
    correct, unscored, samples = 0, 0, []
    for conv, gens in zip(problems, outs, strict=True):
        want = extract_final_number(conv.turns[-1].content)
        unscored += want is None
        hits = [want is not None and extract_final_number(g.text) == want for g in gens]
        correct += any(hits)
        samples.append({"question": conv.turns[0].content, "reference": want, "replies": [g.text for g in gens],
                        "correct": hits})
    n = len(problems) - unscored
    return {"accuracy" if k == 1 else f"pass@{k}": round(correct / max(n, 1), 4), "n": n, "correct": correct,
            "unscored": unscored, "ci95": wilson_interval(correct, n), "samples": samples}
