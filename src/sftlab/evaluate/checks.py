"""Behaviour checks on generated replies: identity, collapse, stopping, language."""

from __future__ import annotations

from sftlab.textutil import same_language, script

__all__ = ["mentions_identity", "rate", "same_language", "script"]

def mentions_identity(text: str, name: str, author: str | None = None) -> bool:
    """The reply names the model or its maker ("I am built by <author>" counts)."""
    low = text.lower()
    return name.lower() in low or bool(author and author.lower() in low)


def rate(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 3) if flags else None
