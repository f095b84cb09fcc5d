"""Format adapters: turn a raw record (dict) of a known community format into a Conversation.

Supported: OpenAI `messages`, `prompt`/`completion`, Alpaca `instruction`/`input`/`output`,
ShareGPT `conversations` (`from`/`value`, incl. `function_call`/`observation`) and `question`/`answer`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

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
                conv = json.loads(conv)
            except json.JSONDecodeError:
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
    if isinstance(value, str) and kind is list:
        try:  # CSV/SQL cells carry lists as JSON text
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"expected a JSON list, got text that is not JSON ({e.msg})", field=field,
                            reason="invalid JSON") from None
    if not isinstance(value, kind):
        raise DataError(f"expected {_kind_name(kind)}, got {type(value).__name__}", field=field,
                        reason="wrong type")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", list: "a list", dict: "an object"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _parse_tools(value: Any, field: str = "tools") -> list[dict[str, Any]] | None:
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"tools must be a JSON list of function schemas ({e.msg})", field=field,
                            reason="invalid JSON") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise DataError("tools must be a list of function schemas", field=field, reason="wrong type")
    return value


def _parse_tool_call(value: Any, field: str) -> dict[str, Any]:
    """A call as {"name": str, "arguments": dict}; accepts JSON text and OpenAI's nested form."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"function call is not valid JSON ({e.msg})", field=field,
                            reason="invalid tool call") from None
    if isinstance(value, dict) and "function" in value:
        value = value["function"]
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise DataError("function call needs a string 'name'", field=field, reason="invalid tool call")
    args = value.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise DataError(f"function call arguments are not valid JSON ({e.msg})", field=field,
                            reason="invalid tool call") from None
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
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise DataError(f"content must be a string, got {type(content).__name__}", field=f"{f}.content",
                            reason="wrong type")
        calls = m.get("tool_calls")
        tool_calls = [_parse_tool_call(c, f"{f}.tool_calls[{j}]") for j, c in enumerate(calls)] if calls else None
        weight = m.get("weight", 1.0)
        turns.append(Turn(role=str(m["role"]), content=content, weight=float(1.0 if weight is None else weight),
                          tool_calls=tool_calls, name=m.get("name")))
    return Conversation(turns=turns, tools=_parse_tools(record.get("tools")))


def from_prompt_completion(record: dict[str, Any]) -> Conversation:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):  # conversational prompt/completion
        conv = from_messages({"messages": list(prompt or []) + list(completion or [])})
        conv.tools = _parse_tools(record.get("tools"))
        return conv
    turns = []
    if record.get("system"):
        turns.append(Turn("system", str(record["system"])))
    turns.append(Turn("user", _require(record, "prompt")))
    if "completion" in record:  # a prompt set has none; validation decides whether one is required
        turns.append(Turn("assistant", _require(record, "completion")))
    return Conversation(turns=turns)


def from_alpaca(record: dict[str, Any]) -> Conversation:
    instruction = _require(record, "instruction")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise DataError(f"expected a string, got {type(extra).__name__}", field="input", reason="wrong type")
    turns = [Turn("system", str(record["system"]))] if record.get("system") else []
    for j, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise DataError("history items must be [user, assistant] pairs", field=f"history[{j}]",
                            reason="wrong type")
        turns += [Turn("user", str(pair[0])), Turn("assistant", str(pair[1]))]
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    turns += [Turn("user", user), Turn("assistant", _require(record, "output"))]
    return Conversation(turns=turns)


def from_sharegpt(record: dict[str, Any]) -> Conversation:
    msgs = _require(record, "conversations", list)
    turns = [Turn("system", str(record["system"]))] if record.get("system") else []
    for i, m in enumerate(msgs):
        f = f"conversations[{i}]"
        if not isinstance(m, dict) or "from" not in m or "value" not in m:
            raise DataError("expected an object with 'from' and 'value'", field=f, reason="missing field")
        role = SHAREGPT_ROLES.get(str(m["from"]))
        if role is None:
            raise DataError(f"unknown speaker '{m['from']}' (expected one of {sorted(SHAREGPT_ROLES)})",
                            field=f"{f}.from", reason="unknown role")
        value = m["value"] if m["value"] is not None else ""
        if m["from"] == "function_call":
            turns.append(Turn("assistant", "", tool_calls=[_parse_tool_call(value, f"{f}.value")],
                              weight=float(m.get("weight", 1.0))))
        else:
            turns.append(Turn(role, str(value), weight=float(m.get("weight", 1.0))))
    return Conversation(turns=turns, tools=_parse_tools(record.get("tools")))


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
