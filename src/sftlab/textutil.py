"""Small text helpers shared by curation and evaluation: writing-script detection, normalisation, n-grams,
final numeric answers; where a file stops being UTF-8."""

from __future__ import annotations

import re
import unicodedata

CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")  # Chinese characters (CJK ideographs)
_LATIN_WORD = re.compile(r"[A-Za-z]+")
_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"(?:(?<![\w)])-)?\d[\d,]*(?:\.\d+)?")  # "10-15": a hyphen after a digit is no minus sign


def not_utf8(raw: bytes, e: UnicodeDecodeError) -> tuple[str, int]:
    """Message and line number of the first undecodable byte in `raw` (`e` from decoding `raw` itself, byte order
    mark included): enough to find it in an editor."""
    line_start = raw.rfind(b"\n", 0, e.start) + 1
    message = (f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start - line_start + 1} of the line); "
               "save the file as UTF-8")
    return message, raw.count(b"\n", 0, line_start) + 1


def script(text: str) -> str:
    """'zh' when CJK characters are at least as many as Latin words, 'latin' otherwise ('' for no letters). Words, not
    letters: a Chinese character carries about a word, so "我是Orca，由the sftlab team开发的AI助手。" is Chinese."""
    cjk, latin = len(CJK.findall(text)), len(_LATIN_WORD.findall(text))
    if cjk == latin == 0:
        return ""
    return "zh" if cjk >= latin else "latin"


def same_language(prompt: str, reply: str) -> bool:
    """The reply's answer (not a think block before it) is in the prompt's script."""
    reply = answer_of(reply)
    return bool(reply.strip()) and script(prompt) == script(reply)


def normalize(text: str) -> str:
    """Case-, width- and whitespace-insensitive form used for exact duplicate hashing."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def words(text: str) -> list[str]:
    """Word tokens; each CJK character counts as a word so n-grams work for Chinese too."""
    out = []
    for w in _WORD.findall(unicodedata.normalize("NFKC", text).lower()):
        if CJK.search(w):
            out.extend(w)
        else:
            out.append(w)
    return out


def ngrams(tokens: list[str], n: int) -> list[str]:
    if len(tokens) < n:
        return [" ".join(tokens)] if tokens else []
    return [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


# the final answer's markers; the last one in the text wins: "#### 42", "the answer is 42", "Answer: **42**", \boxed{42}
_MARKED = r"(-?\$?[\d,]*\.?\d+(?:/\d+)?)"  # a negative amount of money is written "-$3"; a fraction "3/4"
_FINAL_MARKER = re.compile(rf"####\s*{_MARKED}|answer(?:\s+is|\s*:)[:\s$*\\(]*{_MARKED}|\\boxed\{{{_MARKED}\}}",
                           re.IGNORECASE)
# a calculation that goes on from the marked number: "the answer is 3 * 6 = 18" -> its result, 18
_CALCULATION = re.compile(r"(?:\s*[-+*/×÷x]\s*\$?\d[\d,]*(?:\.\d+)?)+\s*=\s*\$?(-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?)")
# a LaTeX fraction, \frac{3}{4} (or \dfrac, \tfrac): read as the plain fraction 3/4 (a whole denominator, as _MARKED)
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d[\d,]*(?:\.\d+)?)\s*\}\s*\{\s*(\d[\d,]*)\s*\}")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def after_reasoning(text: str) -> str | None:
    """The text after the last </think> (the answer proper); None while a <think> block is still open, i.e. the
    reply ran out of tokens before it answered."""
    opened, closed = text.rfind(THINK_OPEN), text.rfind(THINK_CLOSE)
    if opened > closed:
        return None
    return text[closed + len(THINK_CLOSE):] if closed >= 0 else text


def answer_of(reply: str) -> str:
    """What a reply answers, its think block left out ('' while one is still open): thinking out loud about a name,
    a tool or in another language is not the answer the checks score."""
    return after_reasoning(reply) or ""


def extract_final_number(text: str) -> str | None:
    """GSM8K style: the number after the last '####', 'answer is', 'Answer:' or \\boxed{}, else the last number.
    Only the text after a <think>...</think> block counts; a block that never closes gives no answer."""
    answer = after_reasoning(text)
    if answer is None:
        return None
    answer = _plain_numbers(answer)
    marked = list(_FINAL_MARKER.finditer(answer))
    if marked:
        return _canon_number(_marked_number(answer, marked[-1]))
    nums = _NUMBER.findall(answer)
    return _canon_number(nums[-1]) if nums else None


def _plain_numbers(text: str) -> str:
    """Numbers as the patterns read them: the minus sign '−' as '-' (else "−3" lost its sign) and \\frac{3}{4} as 3/4
    (else its denominator, 4, was the answer)."""
    return _LATEX_FRACTION.sub(r"\1/\2", text.replace("\u2212", "-"))


def _marked_number(text: str, m: re.Match) -> str:
    """The number a final-answer marker gives; where a calculation starts there, its result (not its first operand)."""
    calculation = _CALCULATION.match(text, m.end())
    return calculation.group(1) if calculation else next(g for g in m.groups() if g)


def _canon_number(s: str) -> str | None:
    """'1,250.' -> '1250', '-$3.50' -> '-3.5', '3/4' -> '0.75': equal numbers written differently compare equal."""
    numerator, _, denominator = s.replace(",", "").replace("$", "").rstrip(".").partition("/")
    try:
        v = float(numerator) / float(denominator or 1)
        return str(int(v)) if v == int(v) else str(v)
    except (ValueError, ZeroDivisionError, OverflowError):  # overflow: a degenerate reply's 400 digits are 'inf'
        return None
