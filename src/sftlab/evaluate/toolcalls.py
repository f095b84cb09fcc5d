"""Tool-call scoring: each conversation's first assistant turn is a case; where it called a tool, does the reply call
the right function with valid arguments; where it did not, does the reply answer without a call?"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema

from sftlab.data.schema import Conversation
from sftlab.textutil import answer_of

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_NAME = re.compile(r'"name"\s*:\s*"([^"]*)"(?!\s*,\s*"description")')  # a tool's definition is no call


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
    block, or a bare JSON object; `arguments` given as a JSON string is decoded. None when there is none. A call
    written in a think block is only thought of, not made. Outside a `<tool_call>` block an object needs its
    "arguments" (or "parameters"): {"name": "Bob", "age": 3} in an answer is data, not a call."""
    text = answer_of(text)
    tagged = [(m.group(1), {}) for m in _TAGGED.finditer(text)]
    for chunk, no_args in tagged + [(m.group(1), None) for m in _FENCED.finditer(text)] + [(text, None)]:
        for obj in _json_objects(chunk):
            call = obj.get("function", obj) if isinstance(obj.get("function"), dict) else obj
            if _is_definition(call):
                continue
            name, args = call.get("name"), call.get("arguments", call.get("parameters", no_args))
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    continue
            if isinstance(name, str) and isinstance(args, dict):
                return {"name": name, "arguments": args}
    return None


def _is_definition(obj: dict[str, Any]) -> bool:
    """A tool's definition (name, description, parameters schema: the prompt's tool list echoed), not a call to it."""
    return "description" in obj and "arguments" not in obj


def _tool(tools: list[dict[str, Any]] | None, name: str) -> dict[str, Any] | None:
    """The function entry named `name` in a tool list (OpenAI's nested or the flat form)."""
    for t in tools or []:
        fn = t.get("function", t)
        if fn.get("name") == name:
            return fn
    return None


def argument_error(call: dict[str, Any], expected: dict[str, Any], tools: list[dict[str, Any]] | None) -> str:
    """Why the call's arguments are invalid for the function it names ('' when valid): that tool's JSON schema
    (whether or not the model was shown it); with no schema, every argument the expected call used."""
    fn = _tool(tools, call["name"])
    schema = fn.get("parameters") if fn else None
    if not schema and call["name"] != expected["name"]:
        return "" if fn else f"{call['name']!r} is not one of the tools"
    try:
        if schema:
            jsonschema.validate(call["arguments"], schema)
    except jsonschema.ValidationError as e:
        return f"arguments do not match the schema: {e.message}"
    except jsonschema.SchemaError as e:
        return f"the schema of {call['name']!r} is not valid JSON Schema: {e.message}"
    required = set(schema.get("required", [])) if schema else set(expected.get("arguments", {}))
    missing = sorted(required - set(call["arguments"]))
    return f"missing required arguments {missing}" if missing else ""


def score_tool_call(reply: str, expected: dict[str, Any], tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """{"parsed", "right_function", "names_function", "args_valid", "same_arguments", "correct", "error"} for a
    reply that should call `expected`. correct: the right function with valid arguments; names_function: the first
    `"name": "..."` in the reply is the right function, whether or not the call parses (knowing the tool apart from
    writing valid JSON); args_valid: the arguments satisfy the schema of the function called (see
    `argument_error`); same_arguments: the right function with exactly the expected arguments. A think block before
    the answer is left out."""
    reply = answer_of(reply)
    call = parse_tool_call(reply)
    named = _NAME.search(reply)
    out = {"parsed": call is not None, "right_function": False, "args_valid": False, "same_arguments": False,
           "correct": False, "error": "", "names_function": bool(named) and named.group(1) == expected["name"]}
    if call is None:
        out["error"] = "no parseable tool call"
        return out
    right = call["name"] == expected["name"]
    arg_error = argument_error(call, expected, tools)
    out.update(right_function=right, args_valid=not arg_error, correct=right and not arg_error,
               same_arguments=right and call["arguments"] == expected.get("arguments", {}))
    wrong = "" if right else f"called {call['name']!r}, expected {expected['name']!r}"
    out["error"] = "; ".join(x for x in (wrong, arg_error) if x)
    return out


def _started_call(text: str) -> str | None:
    """The function a `<tool_call>` block names even where its JSON does not parse (cut off, a brace short): such a
    reply tried to call a tool, it did not answer without one."""
    for m in _TAGGED.finditer(text):
        if named := _NAME.search(m.group(1)):
            return named.group(1)
    return None


def score_no_call(reply: str) -> dict[str, Any]:
    """{"parsed", "no_call", "error"} for a reply that should answer without calling a tool (a call only thought
    of, in a think block, is none)."""
    reply = answer_of(reply)
    call = parse_tool_call(reply)
    started = None if call else _started_call(reply)
    error = (f"called {call['name']!r} where no call was needed" if call else
             f"started a call to {started!r} (not parseable) where no call was needed" if started else "")
    return {"parsed": call is not None, "no_call": call is None and started is None, "error": error}


@dataclass
class ToolCase:
    """One conversation cut before its first assistant turn: what the model is shown, and the call that turn made
    (None: it answered without one)."""

    messages: list[dict[str, Any]]
    expected: dict[str, Any] | None
    tools: list[dict[str, Any]] | None
    prompt: str

    @property
    def kind(self) -> str:
        return "call" if self.expected else "no_call"

    def score(self, reply: str) -> dict[str, Any]:
        return score_tool_call(reply, self.expected, self.tools) if self.expected else score_no_call(reply)


def first_reply_index(conv: Conversation) -> int | None:
    """Index of the conversation's first assistant turn (None: it has none)."""
    return next((i for i, t in enumerate(conv.turns) if t.role == "assistant"), None)


def expects_call(conv: Conversation) -> bool:
    """Whether the conversation's first assistant turn calls a tool."""
    first = first_reply_index(conv)
    return first is not None and bool(conv.turns[first].tool_calls)


def describe_tools(tools: list[dict[str, Any]]) -> str:
    """The system message that shows a model the tools and how to call one (`tools_in_prompt: true`)."""
    return ("You can call these functions. To call one, reply with <tool_call>{\"name\": ..., \"arguments\": {...}}"
            "</tool_call>.\n" + json.dumps(tools, ensure_ascii=False))


def tool_cases(convs: list[Conversation], tools_in_prompt: bool) -> list[ToolCase]:
    """A case per conversation with an assistant turn. With `tools_in_prompt` the tools are described in a system
    message (replacing the conversation's own); without, the model sees the turns alone, no schema anywhere."""
    cases = []
    for conv in convs:
        first = first_reply_index(conv)
        if not first:
            continue
        msgs = [t.to_dict() for t in conv.turns[:first]]
        if tools_in_prompt and conv.tools:
            msgs = [{"role": "system", "content": describe_tools(conv.tools)}] + [m for m in msgs
                                                                                  if m["role"] != "system"]
        calls = conv.turns[first].tool_calls
        cases.append(ToolCase(msgs, calls[0] if calls else None, conv.tools, conv.turns[first - 1].content))
    return cases
