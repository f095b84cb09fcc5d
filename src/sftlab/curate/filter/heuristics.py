"""Cheap, explainable quality filters: each check returns the reason a response is bad, or None.

SFT imitates everything, so a response that is empty, cut off, looping, a refusal, in the wrong language or
with broken formatting teaches exactly that. Every check is a plain function of (prompt, response) so the
report can show which rule removed which record.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sftlab.textutil import ngrams, script, words

REFUSAL_PATTERNS = [
    r"\bas an ai(?: language)? model\b", r"\bas a (?:large )?language model\b", r"\bi(?:'m| am) (?:just )?an ai\b",
    r"\bi(?:'m| am) sorry,? but (?:i|as an)\b", r"\bi (?:cannot|can't|can not|am unable to|won't) "
    r"(?:help|assist|provide|answer|do that|comply|fulfill)", r"\bi do not have (?:personal|the ability|access)\b",
    r"\bi don't have (?:personal|the ability|access)\b", r"\bmy knowledge cutoff\b",
    r"\bit is not appropriate for me\b", r"\bi'm not able to (?:help|assist|provide)\b",
    r"我(?:不能|无法)(?:帮助|提供|协助|帮你|为你|回答)", r"作为(?:一个)?(?:人工智能|AI)(?:语言模型|助手)?",
]
_REFUSAL = re.compile("|".join(REFUSAL_PATTERNS), re.I)
_END_OK = re.compile(r"""[.!?。！？…"'”’)\]}>*`:;~\d%]\s*$""")


class HeuristicSettings(BaseModel):
    """Thresholds for the rule-based filters; set a check to null/false to switch it off."""

    model_config = ConfigDict(extra="forbid")

    min_response_chars: int = Field(2, ge=0, description="Shorter responses are dropped ('too short').")
    max_response_chars: int | None = Field(8000, description="Longer responses are dropped ('too long').")
    max_prompt_chars: int | None = Field(8000, description="Longer prompts are dropped ('prompt too long').")
    max_repeated_ngram_ratio: float | None = Field(
        0.3, description="Share of word n-grams that repeat an earlier one (looping text).")
    repetition_ngram: int = Field(3, ge=1, description="Words per n-gram of the repetition measure.")
    repetition_min_words: int = Field(20, description="Repetition is only judged on responses this long.")
    refusal: bool | Literal["require"] = Field(
        True, description="true: drop refusals and 'As an AI language model' boilerplate; 'require': keep only "
                          "refusals (curating replies to harmful requests).")
    truncation: bool = Field(True, description="Drop responses that stop mid-sentence or leave a code fence open.")
    language: Literal["match_prompt", "latin", "zh"] | None = Field(
        "match_prompt", description="Response script must match the prompt's, or a fixed target.")
    json_when_asked: bool = Field(True, description="A prompt that asks for JSON needs a parseable JSON reply.")


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    grams = ngrams(words(text), n)
    if len(grams) < 2:
        return 0.0
    counts = Counter(grams)
    return sum(c - 1 for c in counts.values()) / len(grams)


def looks_truncated(response: str) -> bool:
    """Stops mid-sentence: ends on a letter after a long last line (lists, titles and code are fine), or ends
    inside an open code fence."""
    text = response.rstrip()
    if text.count("```") % 2 == 1:
        return True
    if not text or _END_OK.search(text):
        return False
    last = text.splitlines()[-1].strip()
    if re.match(r"^([-*•]|\d+[.)]|#)", last):  # a list item or heading may end without punctuation
        return False
    return len(last.split()) >= 8 or text.endswith((",", " and", " or", " the", " a", " of", " to"))


def _has_json(text: str) -> bool:
    dec = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                dec.raw_decode(text, i)
                return True
            except json.JSONDecodeError:
                continue
    return False


def check(prompt: str, response: str, s: HeuristicSettings) -> str | None:
    """The first rule the (prompt, response) pair breaks, as a short reason; None when it passes."""
    r = response.strip()
    if not r:
        return "empty response"
    if len(r) < s.min_response_chars:
        return "too short"
    if s.max_response_chars and len(r) > s.max_response_chars:
        return "too long"
    if s.max_prompt_chars and len(prompt) > s.max_prompt_chars:
        return "prompt too long"
    if s.refusal == "require" and not _REFUSAL.search(r):
        return "not a refusal"
    if s.refusal is True and _REFUSAL.search(r):
        return "refusal or boilerplate"
    if s.truncation and looks_truncated(r):
        return "truncated"
    if s.max_repeated_ngram_ratio is not None and len(r.split()) >= s.repetition_min_words and \
            repeated_ngram_ratio(r, s.repetition_ngram) > s.max_repeated_ngram_ratio:
        return "repetitive"
    if s.language:
        want = script(prompt) if s.language == "match_prompt" else s.language
        got = script(r)
        if want and got and want != got:
            return "language mismatch"
    if s.json_when_asked and re.search(r"\bjson\b", prompt, re.I) and not _has_json(r):
        return "invalid JSON where JSON is asked for"
    return None
