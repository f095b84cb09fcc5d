"""What `sftlab serve` accepts: an OpenAI chat completion request validated field by field, every refusal a
BadRequest that names the offending parameter (so the client sees which field to fix)."""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass, replace
from typing import Any

from sftlab.generation.base import SamplingParams

ROLES = ("system", "user", "assistant", "tool")
# OpenAI parameters this server cannot honour: accepted only with a value that changes nothing, else a 400
# (silently ignoring `stop` or `tools` would return output the client did not ask for).
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "stop": (None, "", []), "tools": (None, []), "functions": (None, []), "tool_choice": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}), "logprobs": (None, False), "top_logprobs": (None, 0),
    "logit_bias": (None, {}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
}
MAX_RETRY_AFTER_S = 60


class BadRequest(Exception):
    """A request the server refuses: HTTP status, message and the offending parameter."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    params: SamplingParams  # what the engine runs (n=1 for greedy: n identical replies are copies)
    copies: int  # replies per engine reply (n for greedy, else 1)
    stream: bool
    include_usage: bool
    max_tokens_given: bool  # False: the default budget may shrink to fit the context window
    batchable: bool  # False for seeded sampling: co-batched rows would draw different random numbers


def parse_body(raw: bytes) -> Any:
    """JSON, or a 400 (also for nesting deep enough to exhaust the parser's recursion)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise BadRequest("request body is not valid JSON") from None


def _content(message: dict[str, Any], i: int) -> str:
    """A message's text: a string, or a list of text parts (the only part type a text model can read)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest("content must be a string or a list of text parts", f"messages[{i}].content")
    texts = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if not isinstance(part, dict):
            raise BadRequest("a content part must be an object like {\"type\": \"text\", \"text\": \"...\"}", where)
        if part.get("type") != "text":
            raise BadRequest(f"only text content parts are supported, not {json.dumps(part.get('type'))}",
                             f"{where}.type")
        if not isinstance(part.get("text"), str):
            raise BadRequest("a text part's 'text' must be a string", f"{where}.text")
        texts.append(part["text"])
    return "".join(texts)


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest("each message needs a role of system, user, assistant or tool", f"messages[{i}].role")
        if m.get("tool_calls"):
            raise BadRequest("tool calls in messages are not supported by this server", f"messages[{i}].tool_calls")
        text = _content(m, i)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # JSON allows a lone UTF-16 surrogate ("\\ud800"); no tokenizer can encode it
            raise BadRequest("content is not valid Unicode text (it holds a lone UTF-16 surrogate such as \\ud800)",
                             f"messages[{i}].content") from None
        clean.append({"role": m["role"], "content": text})
    if clean[-1]["role"] == "assistant":
        raise BadRequest("the last message must not be from the assistant", "messages")
    return clean


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float, kind: type = float) -> Any:
    """A JSON number in [lo, hi] (an integer where kind is int); NaN, Infinity, strings and booleans are 400s."""
    v = body.get(name, default)
    if v is None:
        v = default
    ok = not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v) and lo <= v <= hi
    if not ok or (kind is int and int(v) != v):
        raise BadRequest(f"'{name}' must be {'an integer' if kind is int else 'a number'} in [{lo}, {hi}]", name)
    return kind(v)


def _flag(body: dict[str, Any], name: str, default: bool = False) -> bool:
    """A JSON boolean: the string "false" is truthy in Python, so it must never be read with bool()."""
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise BadRequest(f"'{name}' must be true or false (a JSON boolean), not {json.dumps(v)[:40]}", name)
    return v


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    """Equal to one of the values that change nothing (booleans only match booleans: False is not 0 here)."""
    return any(value is n if n is None or isinstance(n, bool) else (not isinstance(value, bool) and value == n)
               for n in neutral)


def _reject_unsupported(body: dict[str, Any]) -> None:
    for name, neutral in NEUTRAL_VALUES.items():
        if name in body and not _is_neutral(body[name], neutral):
            raise BadRequest(f"'{name}' is not supported by this server (replies are plain text and end at the "
                             "model's end-of-turn token)", name)


def _stream_options(body: dict[str, Any], stream: bool) -> bool:
    """Whether a stream ends with a usage chunk (`stream_options.include_usage`)."""
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not stream:
        raise BadRequest("'stream_options' is only allowed with stream: true", "stream_options")
    if not isinstance(opts, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    return _flag(opts, "include_usage")


def parse_request(body: Any, max_tokens_limit: int, max_n: int = 8) -> ChatRequest:
    """Validate a chat completion request; raise BadRequest naming the offending field."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    messages = _messages(body)
    _reject_unsupported(body)
    max_tokens = _number(body, "max_tokens", min(256, max_tokens_limit), 1, max_tokens_limit, int)
    if body.get("max_completion_tokens") is not None:
        max_tokens = _number(body, "max_completion_tokens", max_tokens, 1, max_tokens_limit, int)
    temperature = _number(body, "temperature", 1.0, 0, 2)
    n = _number(body, "n", 1, 1, max_n, int)
    params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=_number(body, "top_p", 1.0, 0, 1),
                            n=n if temperature > 0 else 1,
                            # no seed: a fresh one per request, so identical requests are not identical samples
                            seed=_number(body, "seed", secrets.randbelow(2**31), 0, 2**31 - 1, int))
    stream = _flag(body, "stream")
    if stream and n != 1:
        raise BadRequest("streaming supports n=1 only", "n")
    given = any(body.get(k) is not None for k in ("max_tokens", "max_completion_tokens"))
    return ChatRequest(messages, params, copies=1 if temperature > 0 else n, stream=stream,
                       include_usage=_stream_options(body, stream), max_tokens_given=given,
                       batchable=temperature == 0 or body.get("seed") is None)


def fit_context(request: ChatRequest, n_prompt: int, context_window: int | None) -> SamplingParams:
    """The engine parameters for a prompt of n_prompt tokens: a 400 naming the window when it cannot fit; an
    unrequested default budget shrinks to the room left, an explicit max_tokens never does."""
    params = request.params
    if not context_window:
        return params
    if n_prompt >= context_window:
        raise BadRequest(f"the prompt is {n_prompt} tokens; this model's context window is {context_window} tokens",
                         "messages", code="context_length_exceeded")
    room = context_window - n_prompt
    if params.max_new_tokens <= room:
        return params
    if request.max_tokens_given:
        raise BadRequest(f"the prompt is {n_prompt} tokens and max_tokens is {params.max_new_tokens}: together more "
                         f"than this model's context window of {context_window} tokens (at most {room} new tokens fit)",
                         "max_tokens", code="context_length_exceeded")
    return replace(params, max_new_tokens=room)
