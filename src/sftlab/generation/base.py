"""One interface for every generation engine: chat prompts in, n replies per prompt out."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from sftlab.data.schema import Conversation

Messages = list[dict[str, Any]]

# Greedy decoding reads every weight once per step for the whole batch, so larger batches are nearly free until
# compute binds: the demo's 88 held-out replies from gemma-3-270m (fp32, 2 CPU cores) took 286-332 s for the base
# and 80-91 s for the tuned model in batches of 16, 165-202 s and 54-69 s in batches of 44-48, 185 s and 56 s in
# one of 88; the replies at 48 and 88 were those at 16.
GENERATION_BATCH = 48
# ... and at most this many padded tokens (longest prompt + new tokens, every row): sorted by length, the tools
# recipe's 80 held-out prompts end in one of 5,834 tokens, which padded a batch of 32 to 5.9k tokens each (189k
# tokens of prefill, 12.8 GB resident for eager attention) and took longer than a batch of 16 had.
GENERATION_TOKENS = 16384
# Rows that ended leave the batch every this many new tokens (a generate call each, the KV cache carried over):
# replies of unequal length no longer keep a whole batch decoding for the longest (48 greedy replies of up to
# 256 tokens: SmolLM2-135M 40 -> 23 s in bf16, 62 -> 42 s in fp32 with the same replies; the 1.5B teacher
# sampling 48 of up to 192 tokens, 142 -> 78 s).
GENERATION_CHUNK = 32


class GenerationError(RuntimeError):
    """The engine could not produce a reply (endpoint down, garbage response, ...)."""


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1  # replies per prompt
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Generation:
    text: str
    n_tokens: int
    finished: bool  # ended with an end-of-turn/EOS token within the budget
    # calls an endpoint returned as structured `tool_calls` (beside or instead of text), as Turn.tool_calls holds
    # them: [{"name": str, "arguments": dict}]; a local engine's calls stay in `text` as the template wrote them
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_error: str | None = None  # why a call the endpoint returned could not be read (e.g. arguments not JSON)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"text": self.text, "n_tokens": self.n_tokens, "finished": self.finished}
        if self.tool_calls:
            d["tool_calls"] = self.tool_calls
        if self.tool_call_error:
            d["tool_call_error"] = self.tool_call_error
        return d

    @property
    def text_with_calls(self) -> str:
        """The reply as one text, each structured call as the `<tool_call>` block the named chat templates render
        (what scorers that read a call from text, e.g. the json_valid reward, look for)."""
        calls = [f"<tool_call>\n{json.dumps(c, ensure_ascii=False)}\n</tool_call>" for c in self.tool_calls or []]
        return "\n".join([self.text, *calls] if self.text else calls)


class Generator(Protocol):
    """What curation, evaluation and serving need from an engine."""

    model_id: str

    def generate(self, prompts: list[Messages | Conversation], params: SamplingParams) -> list[list[Generation]]:
        """`params.n` generations for each prompt, in prompt order. A prompt with tools comes as a Conversation
        (its prompt turns and tools, e.g. through `prompt_ids`): messages alone would hide the tools."""
        ...


def as_messages(p: Conversation | Messages | str) -> Messages:
    """A prompt as chat messages: a string is one user turn; a Conversation gives its prompt turns."""
    if isinstance(p, str):
        return [{"role": "user", "content": p}]
    if isinstance(p, Conversation):
        return p.prompt_messages
    return p
