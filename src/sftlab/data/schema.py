"""The one internal representation every reader and template works with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass
class Turn:
    """One message. `weight` 0 keeps an assistant turn in the context but out of the loss."""

    role: str
    content: str
    weight: float = 1.0
    tool_calls: list[dict[str, Any]] | None = None  # [{"name": str, "arguments": dict}]
    name: str | None = None  # tool name, for role == "tool"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.weight != 1.0:
            d["weight"] = self.weight
        if self.tool_calls:
            d["tool_calls"] = [{"type": "function", "function": tc} for tc in self.tool_calls]
        if self.name:
            d["name"] = self.name
        return d


@dataclass
class Conversation:
    """A training example: turns, optional tool schemas, a stable id and free-form metadata."""

    turns: list[Turn]
    id: str = ""
    tools: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """OpenAI-style `messages` record: the format every sftlab writer emits."""
        d: dict[str, Any] = {"id": self.id, "messages": [t.to_dict() for t in self.turns]}
        if self.tools:
            d["tools"] = self.tools
        if self.meta:
            d["meta"] = self.meta
        return d

    @property
    def prompt_turns(self) -> list[Turn]:
        """What a generator is given: everything before a final assistant turn (the reply), or the whole conversation
        when it ends with a user or tool turn (the one to answer: cutting before an earlier assistant turn lost it)."""
        return self.turns[:-1] if self.turns and self.turns[-1].role == "assistant" else list(self.turns)

    @property
    def prompt_messages(self) -> list[dict[str, Any]]:
        """The prompt turns as chat messages (the shape chat templates and engines take)."""
        return [t.to_dict() for t in self.prompt_turns]

    @property
    def last_response(self) -> str | None:
        for t in reversed(self.turns):
            if t.role == "assistant":
                return t.content
        return None
