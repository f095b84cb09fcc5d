"""The pool the filter works on: every source record once, with the prompt and reply text the stages compare."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.data.loading import DataSpec, load_conversations
from sftlab.data.schema import Conversation


@dataclass
class PoolRecord:
    index: int
    id: str
    source: str
    conv: Conversation
    prompt: str
    response: str
    scores: dict[str, float | None] = field(default_factory=dict)
    stage: str = ""  # the stage that dropped it ("" = alive / selected)
    reason: str = ""  # the category counted in the funnel
    detail: str = ""  # the specifics, where there are any (which eval text it overlaps)
    duplicate_of: str | None = None
    location: str = ""  # where in its source (e.g. "line 12")


def prompt_text(conv: Conversation) -> str:
    """The text a record asks (system, user and tool turns): what dedup, decontamination and diversity compare."""
    return "\n".join(t.content for t in conv.prompt_turns if t.role in ("system", "user", "tool"))


def read_pool(pool: list[DataSpec]) -> tuple[list[PoolRecord], Counter, list[dict[str, Any]]]:
    """Every valid record of every source with a unique id; the skip counts and per-source reports beside."""
    records: list[PoolRecord] = []
    seen: dict[str, int] = {}
    skipped: Counter = Counter()
    sources = []
    for spec in pool:
        convs, rep = load_conversations(spec)
        skipped.update(rep.skipped)
        sources.append(rep.to_dict())
        stem = Path(spec.path).name
        for j, c in enumerate(convs):
            rid = c.id or f"{stem}:{j}"
            if rid in seen:  # readers derive ids from content: identical records would share one
                seen[rid] += 1
                rid = f"{rid}#{seen[rid]}"
            else:
                seen[rid] = 0
            records.append(PoolRecord(len(records), rid, stem, c, prompt_text(c), c.last_response or "",
                                      location=str(c.meta.get("location", f"record {j}"))))
    return records, skipped, sources
