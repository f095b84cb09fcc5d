"""Format adapters: turn a raw record (dict) of a known community format into a Conversation.

Supported: OpenAI `messages`, `prompt`/`completion`, Alpaca `instruction`/`input`/`output`,
ShareGPT `conversations` (`from`/`value`, incl. `function_call`/`observation`) and `question`/`answer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from sftlab.data.readers import parse_json
from sftlab.data.schema import Conversation, Turn
from sftlab.errors import DataError

FORMATS = ("messages", "prompt_completion", "alpaca", "sharegpt", "question_answer")

SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
    "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool",
}


def detect_format(record: dict[str, Any]) -> str | None:
    """Guess the format from the keys of one record; None when nothing matches."""
    keys = set(record)
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        conv = record["conversations"]
        if isinstance(conv, str):
            try:
                conv = parse_json(conv)
            except DataError:  # the adapter reports it, naming the field
                return "sharegpt"
        first = conv[0] if isinstance(conv, list) and conv else {}
        return "messages" if isinstance(first, dict) and "role" in first else "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if "prompt" in keys:  # `completion` may be absent in a prompt set
        return "prompt_completion"
    if {"question", "answer"} <= keys:
        return "question_answer"
    return None


def _require(record: dict[str, Any], field: str, kind: type | tuple[type, ...] = str) -> Any:
    if field not in record or record[field] is None:
        raise DataError(f"missing required field '{field}' (expected {_kind_name(kind)})",
                        field=field, reason="missing field")
    value = record[field]
    if isinstance(value, str) and kind is list:  # CSV/SQL cells carry lists as JSON text
        value = _json_text(value, field, "expected a JSON list, got text that is not JSON")
    if not isinstance(value, kind):
        raise DataError(f"expected {_kind_name(kind)}, got {type(value).__name__}", field=field,
                        reason="wrong type")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", list: "a list", dict: "an object"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _json_text(text: str, field: str, what: str, reason: str = "invalid JSON") -> Any:
    """JSON held in a text field; any failure (syntax, nesting, size) is a DataError naming the field."""
    try:
        return parse_json(text)
    except DataError as e:
        if e.reason == "nested too deep":
            raise DataError(e.message, field=field, reason=e.reason) from None
        raise DataError(f"{what}: {e.message}", field=field, reason=reason) from None


def _text(value: Any, field: str, what: str = "text") -> str:
    """A text field: a string, or nothing (""). Anything else would reach the model as Python's repr of it."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{what} must be a string, got {type(value).__name__}", field=field, reason="wrong type")
    return value


def _weight(value: Any, field: str) -> float:
    """A finite number (default 1): a NaN weight would silently drop the turn out of the loss."""
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"weight must be a number, got {type(value).__name__} {value!r}"[:200], field=field,
                        reason="invalid weight")
    try:
        weight = float(value)
    except OverflowError:  # an integer beyond float range
        weight = math.inf
    if not math.isfinite(weight):
        raise DataError(f"weight must be a finite number, got {weight}", field=field, reason="invalid weight")
    return weight


def _content(content: Any, field: str) -> str:
    """A message's text: a string, or OpenAI content parts whose text parts are joined (others are ignored)."""
    if not isinstance(content, list):
        return _text(content, field, "content")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise DataError(f"a content part must be an object like {{\"type\": \"text\", \"text\": ...}}, "
                            f"got {type(part).__name__}", field=f"{field}[{j}]", reason="wrong type")
        if part.get("type", "text") == "text":
            if not isinstance(part.get("text"), str):
                raise DataError(f"the text of a text part must be a string, got {type(part.get('text')).__name__}",
                                field=f"{field}[{j}].text", reason="wrong type")
            texts.append(part["text"])
    return "".join(texts)


def _parse_tools(value: Any, field: str = "tools") -> list[dict[str, Any]] | None:
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        value = _json_text(value, field, "tools must be a JSON list of function schemas")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise DataError("tools must be a list of function schemas", field=field, reason="wrong type")
    return value


def _parse_tool_calls(value: Any, field: str) -> list[dict[str, Any]] | None:
    if value in (None, "", []):
        return None
    if not isinstance(value, list):
        raise DataError(f"tool_calls must be a list of calls, got {type(value).__name__}", field=field,
                        reason="invalid tool call")
    return [_parse_tool_call(c, f"{field}[{j}]") for j, c in enumerate(value)]


def _parse_tool_call(value: Any, field: str) -> dict[str, Any]:
    """A call as {"name": str, "arguments": dict}; accepts JSON text and OpenAI's nested form."""
    if isinstance(value, str):
        value = _json_text(value, field, "function call is not valid JSON", reason="invalid tool call")
    if isinstance(value, dict) and "function" in value:
        value = value["function"]
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise DataError("function call needs a string 'name'", field=field, reason="invalid tool call")
    args = value.get("arguments")
    if isinstance(args, str):
        args = _json_text(args, f"{field}.arguments", "function call arguments are not valid JSON",
                          reason="invalid tool call") if args.strip() else None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise DataError(f"function call arguments must be a JSON object, got {type(args).__name__}",
                        field=f"{field}.arguments", reason="invalid tool call")
    return {"name": value["name"], "arguments": args}


def from_messages(record: dict[str, Any]) -> Conversation:
    key = "messages" if "messages" in record else "conversations"
    msgs = _require(record, key, list)
    turns = []
    for i, m in enumerate(msgs):
        f = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise DataError(f"expected an object with 'role' and 'content', got {type(m).__name__}", field=f,
                            reason="wrong type")
        if "role" not in m:
            raise DataError("message has no 'role'", field=f"{f}.role", reason="missing field")
        turns.append(Turn(role=str(m["role"]), content=_content(m.get("content"), f"{f}.content"),
                          weight=_weight(m.get("weight"), f"{f}.weight"),
                          tool_calls=_parse_tool_calls(m.get("tool_calls"), f"{f}.tool_calls"),
                          name=_text(m.get("name"), f"{f}.name", "name") or None))
    system = _system_turn(record)  # a top-level `system` beside role/content turns (it was dropped)
    if system and turns and turns[0].role == "system":
        raise DataError(f"both a `system` field and a system message in `{key}`: keep one", field="system",
                        reason="conflicting fields")
    return Conversation(turns=system + turns, tools=_parse_tools(record.get("tools")))


def from_prompt_completion(record: dict[str, Any]) -> Conversation:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):  # conversational prompt/completion
        for key, value in (("prompt", prompt), ("completion", completion)):
            if not isinstance(value, list | None):
                raise DataError(f"expected a list of messages like the other field, got {type(value).__name__}",
                                field=key, reason="wrong type")
        conv = from_messages({"messages": list(prompt or []) + list(completion or [])})
        conv.tools = _parse_tools(record.get("tools"))
        return conv
    turns = _system_turn(record)
    turns.append(Turn("user", _require(record, "prompt")))
    if "completion" in record:  # a prompt set has none; validation decides whether one is required
        turns.append(Turn("assistant", _require(record, "completion")))
    return Conversation(turns=turns)


def _system_turn(record: dict[str, Any]) -> list[Turn]:
    """The record's `system` text as a first turn, when it has one."""
    system = _text(record.get("system"), "system", "system")
    return [Turn("system", system)] if system else []


def from_alpaca(record: dict[str, Any]) -> Conversation:
    instruction = _require(record, "instruction")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise DataError(f"expected a string, got {type(extra).__name__}", field="input", reason="wrong type")
    turns = _system_turn(record)
    history = record.get("history") or []
    if isinstance(history, str):  # CSV/SQL cells carry lists as JSON text
        history = _json_text(history, "history", "expected a JSON list of [user, assistant] pairs, got text that is "
                             "not JSON")
    if not isinstance(history, list):
        raise DataError(f"history must be a list of [user, assistant] pairs, got {type(history).__name__}",
                        field="history", reason="wrong type")
    for j, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise DataError("history items must be [user, assistant] pairs of strings", field=f"history[{j}]",
                            reason="wrong type")
        turns += [Turn("user", pair[0]), Turn("assistant", pair[1])]
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    turns += [Turn("user", user), Turn("assistant", _require(record, "output"))]
    return Conversation(turns=turns)


def from_sharegpt(record: dict[str, Any]) -> Conversation:
    msgs = _require(record, "conversations", list)
    turns = _system_turn(record)
    for i, m in enumerate(msgs):
        f = f"conversations[{i}]"
        if not isinstance(m, dict) or "from" not in m or "value" not in m:
            raise DataError("expected an object with 'from' and 'value'", field=f, reason="missing field")
        role = SHAREGPT_ROLES.get(str(m["from"]))
        if role is None:
            raise DataError(f"unknown speaker '{m['from']}' (expected one of {sorted(SHAREGPT_ROLES)})",
                            field=f"{f}.from", reason="unknown role")
        weight = _weight(m.get("weight"), f"{f}.weight")
        if m["from"] == "function_call":
            turns.append(Turn("assistant", "", tool_calls=_sharegpt_calls(m["value"], f"{f}.value"), weight=weight))
        else:
            turns.append(Turn(role, _text(m["value"], f"{f}.value", "value"), weight=weight))
    return Conversation(turns=turns, tools=_parse_tools(record.get("tools")))


def _sharegpt_calls(value: Any, field: str) -> list[dict[str, Any]]:
    """A function_call turn's value: one call, or a JSON list of parallel calls (as LLaMA-Factory writes them)."""
    if isinstance(value, str):
        value = _json_text(value, field, "function call is not valid JSON", reason="invalid tool call")
    if isinstance(value, list):
        return [_parse_tool_call(c, f"{field}[{j}]") for j, c in enumerate(value)]
    return [_parse_tool_call(value, field)]


def from_question_answer(record: dict[str, Any]) -> Conversation:
    question, answer = _require(record, "question"), _require(record, "answer")
    return Conversation(turns=[Turn("user", question), Turn("assistant", answer)])


ADAPTERS: dict[str, Callable[[dict[str, Any]], Conversation]] = {
    "messages": from_messages,
    "prompt_completion": from_prompt_completion,
    "alpaca": from_alpaca,
    "sharegpt": from_sharegpt,
    "question_answer": from_question_answer,
}
