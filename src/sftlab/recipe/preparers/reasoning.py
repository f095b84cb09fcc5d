"""Data for the non-reasoning -> reasoning recipe: arithmetic word problems with known answers (train and a disjoint
held-out set), the two training variants made from the teacher's kept solutions (answer only; reasoning then answer)
and a fixed GSM8K test subset for evaluation."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sftlab.data.readers import read_records
from sftlab.data.writers import write_jsonl
from sftlab.errors import ConfigError, DataError
from sftlab.recipe.preparers.word_problems import make_problem
from sftlab.textutil import THINK_CLOSE, THINK_OPEN, extract_final_number, normalize

QUICK_TRAIN, QUICK_HELDOUT, QUICK_GSM8K_TRAIN, QUICK_GSM8K_TEST = 8, 4, 2, 4
_SAYS_ANSWER = r"(?:(?:so|therefore|thus|hence),?\s+)?(?:the\s+)?(?:final\s+)?answer"
# a trailing line that only states the final answer: "#### 42", "The answer is 42.", "**Answer:** 42", "\boxed{42}"
_ANSWER_LINE = re.compile(rf"^\W*(?:####|{_SAYS_ANSWER}\b|\\boxed\{{|\$\\boxed\{{)", re.IGNORECASE)
# "..., so she makes $18. The answer is 18." -> the sentence that only states the answer, at the end of a line
_ANSWER_SENTENCE = re.compile(rf"(?<=[.!?])\s+{_SAYS_ANSWER}\s+is\b.*$", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def answer_sentence(number: str) -> str:
    """The one way both training variants end, so the evaluation reads both the same way."""
    return f"The answer is {number}."


def _records(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, record) of a JSONL/JSON file; the first unreadable record stops with a DataError naming it."""
    for where, rec in read_records(str(path)):
        if isinstance(rec, DataError):
            raise DataError(rec.message, source=str(path), record=where, reason=rec.reason)
        yield where, rec


def _field(rec: dict[str, Any], name: str, path: str | Path, where: str) -> str:
    value = rec.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataError("missing or empty (expected text)", source=str(path), record=where, field=name)
    return value


def read_gsm8k(path: str | Path) -> list[dict[str, str]]:
    """GSM8K `question`/`answer` records, each answer ending in a readable `#### N`."""
    out = []
    for where, rec in _records(path):
        question, answer = _field(rec, "question", path, where), _field(rec, "answer", path, where)
        if "####" not in answer or extract_final_number(answer) is None:
            raise DataError("no final '#### N' answer", source=str(path), record=where, field="answer")
        out.append({"question": question, "answer": answer})
    return out


def _sample(records: list[dict], n: int, seed: int, path: str | Path) -> list[dict]:
    """A seeded sample of `n` records in file order (the same seed and file give the same subset)."""
    if n > len(records):
        raise ConfigError(f"{path}: asked for {n} problems but the file has only {len(records)}")
    return [records[i] for i in sorted(random.Random(seed).sample(range(len(records)), n))]


def _generate(rng: random.Random, count: int, steps: tuple[int, int], seen: set) -> list:
    """`count` new problems, none sharing normalised question text or (template, numbers) with `seen`."""
    made, tries = [], 0
    while len(made) < count:
        tries += 1
        if tries > 50 * count + 100:
            raise ConfigError(f"could not make {count} distinct word problems of {steps[0]}-{steps[1]} steps")
        p = make_problem(rng, rng.randint(*steps))
        keys = {("text", normalize(p.question)), ("shape", p.template, p.numbers)}
        if keys & seen:
            continue
        seen |= keys
        made.append(p)
    return made


def arithmetic_word_problems(out: Path, *, seed: int = 0, quick: bool = False, train: int = 400,
                             heldout: int = 150, min_steps: int = 2, max_steps: int = 4,
                             gsm8k: str | Path | None = None, gsm8k_train: int = 0) -> dict[str, Any]:
    """train.jsonl and heldout.jsonl (GSM8K form), disjoint by question text and by (template, numbers); with
    `gsm8k`, `gsm8k_train` seeded GSM8K train problems are appended to train.jsonl only."""
    if not 1 <= min_steps <= max_steps:
        raise ConfigError(f"min_steps {min_steps} / max_steps {max_steps}: need 1 <= min_steps <= max_steps")
    if min(train, heldout, gsm8k_train) < 0:
        raise ConfigError("train, heldout and gsm8k_train must not be negative")
    if gsm8k_train and not gsm8k:
        raise ConfigError("gsm8k_train > 0 needs `gsm8k`, the path of GSM8K train.jsonl")
    if quick:
        train, heldout, gsm8k_train = QUICK_TRAIN, QUICK_HELDOUT, min(gsm8k_train, QUICK_GSM8K_TRAIN)
    rng, seen = random.Random(seed), set()
    held = _generate(rng, heldout, (min_steps, max_steps), seen)  # first: the held-out set does not move with `train`
    made = _generate(rng, train, (min_steps, max_steps), seen)
    extra = _sample(read_gsm8k(gsm8k), gsm8k_train, seed, gsm8k) if gsm8k_train else []
    write_jsonl(Path(out) / "heldout.jsonl", [p.to_record() for p in held])
    write_jsonl(Path(out) / "train.jsonl", [*(p.to_record() for p in made), *extra])
    return {"train": len(made) + len(extra), "train_synthetic": len(made), "train_gsm8k": len(extra),
            "heldout": len(held), "steps_train": _steps(made), "steps_heldout": _steps(held)}


def _steps(problems: list) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(p.steps for p in problems).items())}


def gsm8k_subset(out: Path, *, seed: int = 0, quick: bool = False, source: str | Path, n: int = 200) -> dict[str, Any]:
    """eval.jsonl: a fixed, seeded subset of GSM8K test, for evaluation only."""
    if n < 1:
        raise ConfigError(f"n {n}: must be at least 1")
    problems = read_gsm8k(source)
    chosen = _sample(problems, min(n, QUICK_GSM8K_TEST) if quick else n, seed, source)
    write_jsonl(Path(out) / "eval.jsonl", chosen)
    return {"eval": len(chosen), "source_problems": len(problems)}


def strip_final_answer(reply: str) -> str:
    """The teacher's reasoning without its own closing answer line(s), trailing answer sentence, `#### N` marker or
    \\boxed{} wrapper: the training reply states the answer once, after the reasoning."""
    lines = reply.strip().split("\n")
    if any(line.lstrip().startswith("####") for line in lines):
        lines = lines[:next(i for i, line in enumerate(lines) if line.lstrip().startswith("####"))]
    while lines and (not lines[-1].strip() or _ANSWER_LINE.match(lines[-1].strip())):
        lines.pop()
    if lines:
        lines[-1] = _ANSWER_SENTENCE.sub("", lines[-1])
    return _BOXED.sub(r"\1", "\n".join(lines)).strip()


def _prompt_and_reply(rec: dict[str, Any], path: str | Path, where: str) -> tuple[str, str]:
    """The last user turn and the final assistant turn of a curated `messages` record."""
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
        raise DataError("expected a list of messages", source=str(path), record=where, field="messages")
    if not msgs or msgs[-1].get("role") != "assistant" or not isinstance(msgs[-1].get("content"), str):
        raise DataError("the last message must be the assistant's reply (text)", source=str(path), record=where,
                        field="messages")
    users = [m.get("content") for m in msgs if m.get("role") == "user"]
    if not users or not isinstance(users[-1], str) or not users[-1].strip():
        raise DataError("no user prompt", source=str(path), record=where, field="messages")
    return users[-1], msgs[-1]["content"]


def _variant_pair(rec: dict[str, Any], path: str | Path, where: str) -> tuple[dict, dict] | str:
    """(answers-only record, think record) for one kept solution, or why it is skipped. A GSM8K-form record
    (question + worked answer ending `#### N`) counts as a solution too: human-written reasoning."""
    if isinstance(rec.get("question"), str) and isinstance(rec.get("answer"), str):
        rec = {"id": rec.get("id", where), "meta": {"reference": rec["answer"]},
               "messages": [{"role": "user", "content": rec["question"]},
                            {"role": "assistant", "content": rec["answer"]}]}
    prompt, reply = _prompt_and_reply(rec, path, where)
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    number = extract_final_number(meta["reference"]) if isinstance(meta.get("reference"), str) else None
    if number is None:
        return "no reference answer"
    if extract_final_number(reply) != number:
        return "teacher's answer differs from the reference"
    reasoning = strip_final_answer(reply)
    if not reasoning or THINK_OPEN in reasoning or THINK_CLOSE in reasoning:
        return "no usable reasoning"
    final = answer_sentence(number)
    rid = rec.get("id", where)

    def record(text: str) -> dict:
        return {"id": rid, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]}

    return record(final), record(f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n{final}")


def reasoning_variants(out: Path, *, seed: int = 0, quick: bool = False, source: str | Path) -> dict[str, Any]:
    """answers_only.jsonl (prompt -> "The answer is N.") and think.jsonl (prompt -> <think> reasoning </think>,
    then the same sentence) from a best-of-k output: same prompts, same order, N from the record's reference."""
    answers, thinks, skipped, total = [], [], Counter(), 0
    for where, rec in _records(source):
        total += 1
        pair = _variant_pair(rec, source, where)
        if isinstance(pair, str):
            skipped[pair] += 1
            continue
        answers.append(pair[0])
        thinks.append(pair[1])
    write_jsonl(Path(out) / "answers_only.jsonl", answers)
    write_jsonl(Path(out) / "think.jsonl", thinks)
    return {"source_records": total, "records": len(answers), "skipped": dict(skipped)}
