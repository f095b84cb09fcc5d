"""Behaviour checks on generated replies: identity, collapse, stopping, language."""

from __future__ import annotations

import re

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def script(text: str) -> str:
    """'zh' when CJK characters dominate the letters, 'latin' otherwise ('' for no letters)."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    if cjk == latin == 0:
        return ""
    return "zh" if cjk * 2 >= latin else "latin"


def mentions_identity(text: str, name: str, author: str | None = None) -> bool:
    """The reply names the model or its maker ("I am built by <author>" counts)."""
    low = text.lower()
    return name.lower() in low or bool(author and author.lower() in low)


def same_language(prompt: str, reply: str) -> bool:
    return bool(reply.strip()) and script(prompt) == script(reply)


def rate(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 3) if flags else None
