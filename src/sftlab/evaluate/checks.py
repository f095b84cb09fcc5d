"""Behaviour checks on generated replies (identity, collapse, stopping, language) and the rates they give."""

from __future__ import annotations

import math

from sftlab.textutil import same_language, script

__all__ = ["mentions_identity", "rate", "same_language", "script", "wilson_interval"]


def mentions_identity(text: str, name: str, author: str | None = None) -> bool:
    """The reply names the model or its maker ("I am built by <author>" counts)."""
    low = text.lower()
    return name.lower() in low or bool(author and author.lower() in low)


def rate(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 3) if flags else None


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of a rate that stays inside [0, 1] and is honest for small n (unlike p ± 1.96·se)."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))
