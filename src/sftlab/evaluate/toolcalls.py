"""Tool-call scoring: does a reply contain a parseable call to the right function with valid arguments?"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def _json_objects(text: str):
    """Every top-level JSON object in `text`, in order (a reply may wrap the call in prose)."""
    dec = json.JSONDecoder()
    i = text.find("{")
    while i != -1:
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            yield obj
        i = text.find("{", end)


def parse_tool_call(text: str) -> dict[str, Any] | None:
    """The first call in a reply as {"name", "arguments": dict}: `<tool_call>{...}</tool_call>`, a fenced JSON
    block, or a bare JSON object; `arguments` given as a JSON string is decoded. None when there is none."""
    candidates = [m.group(1) for m in _TAGGED.finditer(text)] + [m.group(1) for m in _FENCED.finditer(text)] + [text]
    for chunk in candidates:
        for obj in _json_objects(chunk):
            call = obj.get("function", obj) if isinstance(obj.get("function"), dict) else obj
            name, args = call.get("name"), call.get("arguments", call.get("parameters", {}))
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    continue
            if isinstance(name, str) and isinstance(args, dict):
                return {"name": name, "arguments": args}
    return None


def _schema_for(tools: list[dict[str, Any]] | None, name: str) -> dict[str, Any] | None:
    for t in tools or []:
        fn = t.get("function", t)
        if fn.get("name") == name:
            return fn.get("parameters")
    return None


def score_tool_call(reply: str, expected: dict[str, Any], tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """{"parsed", "right_function", "args_valid", "correct", "error"} for one reply against the expected call.

    Arguments are valid when they satisfy the tool's JSON schema (when the tool list has one) and contain
    every argument the expected call used that the schema requires (or all of them with no schema)."""
    call = parse_tool_call(reply)
    out = {"parsed": call is not None, "right_function": False, "args_valid": False, "correct": False, "error": ""}
    if call is None:
        out["error"] = "no parseable tool call"
        return out
    out["right_function"] = call["name"] == expected["name"]
    if not out["right_function"]:
        out["error"] = f"called {call['name']!r}, expected {expected['name']!r}"
        return out
    schema = _schema_for(tools, expected["name"])
    required = set(schema.get("required", [])) if schema else set(expected.get("arguments", {}))
    missing = sorted(required - set(call["arguments"]))
    try:
        if schema:
            jsonschema.validate(call["arguments"], schema)
    except jsonschema.ValidationError as e:
        out["error"] = f"arguments do not match the schema: {e.message}"
        return out
    if missing:
        out["error"] = f"missing required arguments {missing}"
        return out
    out["args_valid"] = out["correct"] = True
    return out
