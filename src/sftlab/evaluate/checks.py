"""Behaviour checks on generated replies (identity, collapse, stopping, language) and the rates they give."""

from __future__ import annotations

import math
import re

from sftlab.textutil import CJK, answer_of, same_language, script

__all__ = ["mentions_identity", "rate", "same_language", "script", "wilson_interval"]


def mentions_identity(text: str, name: str, author: str | None = None) -> bool:
    """The reply names the model or its maker ("I am built by <author>" counts), as a word of its own: "Ada" is not
    in "Canada" nor "Meta" in "metadata". Next to Chinese characters, which have no spaces between words, it is.
    Only the answer counts, not a think block before it."""
    low = answer_of(text).lower()
    return _names(low, name.lower()) or bool(author and _names(low, author.lower()))


def _joined(neighbour: str, edge: str) -> bool:
    """Whether two adjacent characters belong to one (non-Chinese) word."""
    return all(c.isalnum() and not CJK.match(c) for c in (neighbour, edge))


def _names(low: str, needle: str) -> bool:
    needle = needle.strip()
    for m in re.finditer(re.escape(needle), low) if needle else ():
        before, after = low[m.start() - 1:m.start()], low[m.end():m.end() + 1]
        if not (before and _joined(before, needle[0])) and not (after and _joined(after, needle[-1])):
            return True
    return False


def rate(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 3) if flags else None


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of a rate that stays inside [0, 1] and is honest for small n (unlike p ± 1.96·se)."""
    if n == 0:  # no data: any rate is possible
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))
