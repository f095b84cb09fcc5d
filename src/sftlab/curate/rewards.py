"""Reward functions for best-of-k: verifiable checkers, a judge model, a reward model, user code, penalties.

A reward is `fn(prompt_messages, response, reference) -> float` (higher is better). Pick one by name
(`gsm8k`, `numeric`, `exact`, `normalized`, `json_valid`, `judge`, `reward_model:PATH`: `make_reward`) or by
`module:function`; combine with `Composite` (weights) and `LengthPenalty`.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from typing import Any

from sftlab.generation.base import Generator, Messages, SamplingParams
from sftlab.textutil import extract_final_number
from sftlab.userfn import import_callable

__all__ = ["extract_final_number"]  # re-exported: rewards and the numeric-answer evaluation share it

RewardFn = Callable[[Messages, str, "str | None"], float]


def numeric_match(prompt: Messages, response: str, reference: str | None) -> float:
    """1.0 when the response's final number equals the reference's final number."""
    if reference is None:
        raise ValueError("numeric reward needs a reference answer")
    want, got = extract_final_number(reference), extract_final_number(response)
    return float(want is not None and want == got)


def exact_match(prompt: Messages, response: str, reference: str | None) -> float:
    return float(reference is not None and response.strip() == reference.strip())


def _normalize(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(w for w in text.split() if w not in {"a", "an", "the"})


def normalized_match(prompt: Messages, response: str, reference: str | None) -> float:
    return float(reference is not None and _normalize(response) == _normalize(reference))


def _json_payload(text: str) -> Any:
    m = re.search(r"<tool_call>\s*(.*?)\s*</tool_call>", text, flags=re.DOTALL)
    body = m.group(1) if m else text.strip().removeprefix("```json").removeprefix("```").removesuffix("```")
    return json.loads(body)


def json_valid(prompt: Messages, response: str, reference: str | None) -> float:
    try:
        _json_payload(response)
    except (json.JSONDecodeError, ValueError):
        return 0.0
    return 1.0


class JsonSchemaMatch:
    """1.0 when the response (or its <tool_call> block) is JSON that validates against `schema`."""

    def __init__(self, schema: dict[str, Any]) -> None:
        import jsonschema

        self.validator = jsonschema.Draft202012Validator(schema)

    def __call__(self, prompt: Messages, response: str, reference: str | None) -> float:
        try:
            payload = _json_payload(response)
        except (json.JSONDecodeError, ValueError):
            return 0.0
        return float(self.validator.is_valid(payload))


class LengthPenalty:
    """Subtract `per_token` for every whitespace token beyond `target` (a nudge towards concise answers)."""

    def __init__(self, target: int = 200, per_token: float = 0.001) -> None:
        self.target, self.per_token = target, per_token

    def __call__(self, prompt: Messages, response: str, reference: str | None) -> float:
        return -self.per_token * max(0, len(response.split()) - self.target)


class Composite:
    """Weighted sum of rewards, e.g. correctness + 0.5 * format − length."""

    def __init__(self, parts: list[tuple[RewardFn, float]]) -> None:
        self.parts = parts

    def __call__(self, prompt: Messages, response: str, reference: str | None) -> float:
        return sum(w * fn(prompt, response, reference) for fn, w in self.parts)


JUDGE_PROMPT = """You are grading an assistant's answer. Rate it from 1 (useless or wrong) to 10 (correct, helpful, \
clear) for the user's request.

Request:
{prompt}

Answer:
{response}

Reply with the rating only, as: Rating: <1-10>"""

_SCORE = re.compile(r"(?:rating|score)\s*[:=]?\s*(10|[1-9])(?:\s*/\s*10)?\b|\b(10|[1-9])\s*/\s*10\b", re.IGNORECASE)


def parse_judge_score(text: str) -> float | None:
    """A 1-10 score from a judge reply ('Rating: 7', '7/10', 'Score = 9', or a lone number); None if absent."""
    m = _SCORE.search(text)
    if m:
        return float(m.group(1) or m.group(2))
    lone = re.fullmatch(r"\s*(10|[1-9])(?:\.0)?\s*\.?\s*", text)
    return float(lone.group(1)) if lone else None


class JudgeReward:
    """An instruct model scores each response on a rubric; unparseable judgements score `fallback` and are
    counted in `unparseable`."""

    def __init__(self, generator: Generator, template: str = JUDGE_PROMPT, fallback: float = 0.0) -> None:
        self.generator, self.template, self.fallback = generator, template, fallback
        self.unparseable = 0
        self.judged = 0

    def score_many(self, items: list[tuple[Messages, str]]) -> list[float]:
        prompts = [[{"role": "user", "content": self.template.format(
            prompt=next((m["content"] for m in reversed(p) if m["role"] == "user"), ""), response=r)}]
            for p, r in items]
        outs = self.generator.generate(prompts, SamplingParams(max_new_tokens=16, temperature=0.0))
        scores = []
        for gens in outs:
            s = parse_judge_score(gens[0].text)
            self.judged += 1
            if s is None:
                self.unparseable += 1
                s = self.fallback
            scores.append(s)
        return scores

    def __call__(self, prompt: Messages, response: str, reference: str | None) -> float:
        return self.score_many([(prompt, response)])[0]


class RewardModelScore:
    """Any Hugging Face sequence-classification model: the logit of its (single or last) class."""

    def __init__(self, model_path: str, batch_size: int = 8) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path, use_safetensors=True).eval()
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
            self.model.config.pad_token_id = self.tok.pad_token_id
        self.batch_size = batch_size

    def _ids(self, prompt: Messages, response: str) -> list[int]:
        """Token ids of the scored conversation: special-token text in a prompt or reply stays text, so a record
        cannot forge turns for the reward model."""
        from sftlab.templates.masking import chat_ids

        msgs = [*prompt, {"role": "assistant", "content": response}]
        if self.tok.chat_template:
            return chat_ids(self.tok, msgs, add_generation_prompt=False)[:self.tok.model_max_length]
        text = "\n\n".join(f"{m['role']}: {m['content']}" for m in msgs)
        return self.tok(text, truncation=True, split_special_tokens=True)["input_ids"]

    def score_many(self, items: list[tuple[Messages, str]]) -> list[float]:
        out: list[float] = []
        for i in range(0, len(items), self.batch_size):
            rows = [self._ids(p, r) for p, r in items[i:i + self.batch_size]]
            enc = self.tok.pad({"input_ids": rows}, return_tensors="pt")
            with self.torch.no_grad():
                logits = self.model(**enc).logits
            out += logits[:, -1].float().tolist()
        return out

    def __call__(self, prompt: Messages, response: str, reference: str | None) -> float:
        return self.score_many([(prompt, response)])[0]


BUILTIN: dict[str, RewardFn] = {
    "gsm8k": numeric_match, "numeric": numeric_match, "exact": exact_match, "normalized": normalized_match,
    "json_valid": json_valid,
}


def resolve_reward(name: str) -> RewardFn:
    """A built-in name or `module:function` (user code on the Python path)."""
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" in name:
        return import_callable(name, "reward")
    raise ValueError(f"unknown reward '{name}' (built-in: {', '.join(BUILTIN)}, or module:function)")


def make_reward(spec: str, judge: str = "smollm2-135m-instruct", base_url: str | list[str] | None = None,
                api_key_env: str | None = "OPENAI_API_KEY", batch_size: int = 8) -> RewardFn:
    """The one place a reward is chosen by name: `judge` (the `judge` model rates the reply), `reward_model:PATH`,
    a built-in checker or `module:function`. Best-of-k and the filter's scorers both call it."""
    if spec == "judge":
        from sftlab.generation.factory import build_generator

        return JudgeReward(build_generator(judge, base_url=base_url, batch_size=batch_size, api_key_env=api_key_env))
    if spec.startswith("reward_model:"):
        return RewardModelScore(spec.split(":", 1)[1], batch_size=batch_size)
    return resolve_reward(spec)


def reward_identity(spec: str, judge: str, base_url: str | list[str] | None = None) -> str:
    """What the reward is, for a resumable run's settings: the judge's or reward model's weights count too."""
    from sftlab.curate.runner import engine_id

    if spec == "judge":
        return f"judge {engine_id(judge, base_url=base_url)}"
    if spec.startswith("reward_model:"):
        return f"reward_model {engine_id(spec.split(':', 1)[1])}"
    return spec
