"""Structural checks every conversation passes before it reaches a template or a trainer."""

from __future__ import annotations

import math

from sftlab.data.schema import ROLES, Conversation
from sftlab.errors import DataError


def validate_conversation(conv: Conversation, require_response: bool = True) -> None:
    """Raise DataError (with field and a short reason) when `conv` is not trainable SFT data.

    Rules: known roles; a system turn only first; then user and assistant alternate, where tool
    results may follow an assistant turn that called a tool; no empty user/assistant turn; at least one
    assistant turn, and the conversation ends with one (a trailing prompt teaches nothing).
    """
    turns = conv.turns
    if not turns:
        raise DataError("conversation has no turns", field="messages", reason="empty conversation")
    prev = None
    for i, t in enumerate(turns):
        f = f"turn {i} ({t.role})"
        if t.role not in ROLES:
            raise DataError(f"unknown role '{t.role}' (expected one of {', '.join(ROLES)})", field=f,
                            reason="unknown role")
        if t.role == "system":
            if i != 0:
                raise DataError("a system turn may only come first", field=f, reason="roles out of order")
        elif t.role in ("user", "assistant") and not t.content.strip() and not t.tool_calls:
            raise DataError(f"{t.role} turn has empty content", field=f, reason=f"empty {t.role} content")
        if not (math.isfinite(t.weight) and t.weight >= 0):  # a NaN weight would silently drop out of the loss
            raise DataError(f"weight must be >= 0 and finite, got {t.weight}", field=f, reason="invalid weight")
        expected = _allowed_after(prev)
        if t.role != "system" and t.role not in expected:
            after = f"after '{prev.role}'" if prev else "at the start"
            raise DataError(
                f"roles must alternate user/assistant after an optional system turn "
                f"(got '{t.role}' {after}; expected {' or '.join(expected)})",
                field=f, reason="roles out of order")
        prev = t
    if not require_response:
        if turns[-1].role not in ("user", "assistant"):
            raise DataError(f"a prompt must end with a user turn, ends with '{turns[-1].role}'",
                            field=f"turn {len(turns) - 1} ({turns[-1].role})", reason="does not end with user")
        return
    if not any(t.role == "assistant" for t in turns):
        raise DataError("conversation has no assistant turn to learn from", field="messages",
                        reason="no assistant turn")
    if turns[-1].role != "assistant":
        raise DataError(f"conversation must end with an assistant turn, ends with '{turns[-1].role}'",
                        field=f"turn {len(turns) - 1} ({turns[-1].role})", reason="does not end with assistant")


def _allowed_after(prev) -> tuple[str, ...]:
    if prev is None or prev.role == "system":
        return ("user",)
    if prev.role == "user":
        return ("assistant",)
    if prev.role == "assistant":
        return ("tool", "user") if prev.tool_calls else ("user",)
    return ("tool", "assistant")  # after a tool result
