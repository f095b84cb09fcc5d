"""Small text helpers shared by curation and evaluation: writing-script detection, normalisation, n-grams,
final numeric answers."""

from __future__ import annotations

import re
import unicodedata

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def script(text: str) -> str:
    """'zh' when CJK characters dominate the letters, 'latin' otherwise ('' for no letters)."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    if cjk == latin == 0:
        return ""
    return "zh" if cjk * 2 >= latin else "latin"


def same_language(prompt: str, reply: str) -> bool:
    return bool(reply.strip()) and script(prompt) == script(reply)


def normalize(text: str) -> str:
    """Case-, width- and whitespace-insensitive form used for exact duplicate hashing."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def words(text: str) -> list[str]:
    """Word tokens; each CJK character counts as a word so n-grams work for Chinese too."""
    out = []
    for w in _WORD.findall(unicodedata.normalize("NFKC", text).lower()):
        if _CJK.search(w):
            out.extend(w)
        else:
            out.append(w)
    return out


def ngrams(tokens: list[str], n: int) -> list[str]:
    if len(tokens) < n:
        return [" ".join(tokens)] if tokens else []
    return [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def extract_final_number(text: str) -> str | None:
    """GSM8K style: the number after '####', else after 'answer is', else the last number in the text."""
    for pattern in (r"####\s*(-?[\d,]*\.?\d+)", r"answer is[:\s$]*(-?[\d,]*\.?\d+)", r"\\boxed\{(-?[\d,]*\.?\d+)\}"):
        m = re.findall(pattern, text, flags=re.IGNORECASE)
        if m:
            return _canon_number(m[-1])
    nums = _NUMBER.findall(text)
    return _canon_number(nums[-1]) if nums else None


def _canon_number(s: str) -> str | None:
    s = s.replace(",", "").rstrip(".")
    try:
        v = float(s)
    except ValueError:
        return None
    return str(int(v)) if v == int(v) else str(v)
