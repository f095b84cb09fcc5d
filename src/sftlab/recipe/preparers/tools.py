"""Recipe 4, tools without descriptions: tool-calling conversations split into training data with every tool schema
removed (the model learns to call tools it is never shown) and held-out conversations that keep them (the
`tool_calls` evaluator validates arguments against the unshown schemas)."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from sftlab.data.loading import DataSpec, load_conversations, make_spec
from sftlab.data.schema import Conversation
from sftlab.data.writers import write_jsonl
from sftlab.errors import ConfigError, DataError
from sftlab.evaluate.toolcalls import argument_error, expects_call, first_reply_index
from sftlab.textutil import normalize

QUICK_HELDOUT, QUICK_TRAIN = 4, 8


def toolcall_split(out: Path, *, seed: int = 0, quick: bool = False, source: str | dict[str, Any],
                   heldout: int = 60) -> dict[str, Any]:
    """train.jsonl (tool descriptions removed) and heldout.jsonl (tools kept) in `out`, disjoint by the first user
    message; the held-out set keeps the source's share of conversations whose first reply calls a tool, and calls
    only functions the training data calls."""
    spec = make_spec(source, "toolcall_split source")
    if isinstance(heldout, bool) or not isinstance(heldout, int) or heldout < 1:
        raise ConfigError(f"toolcall_split: heldout must be a whole number >= 1, got {heldout!r}")
    convs = load_conversations(spec)[0]
    groups = _groups_by_first_message(convs, spec)
    n_heldout = min(heldout, QUICK_HELDOUT) if quick else heldout
    held, every_train, skipped = _split(groups, n_heldout, random.Random(seed), spec)
    train = every_train[:QUICK_TRAIN] if quick else every_train
    hidden = [without_tool_descriptions(c) for c in train]
    write_jsonl(Path(out) / "train.jsonl", hidden)
    write_jsonl(Path(out) / "heldout.jsonl", held)
    calls = sum(expects_call(c) for c in held)
    return {"source_records": len(convs), "train": len(hidden),
            "train_with_calls": sum(any(t.tool_calls for t in c.turns) for c in hidden),
            "heldout": len(held), "heldout_call": calls, "heldout_no_call": len(held) - calls,
            "system_turns_removed": sum(len(c.turns) for c in train) - sum(len(c.turns) for c in hidden),
            "heldout_duplicates_unused": len(convs) - len(held) - len(every_train),
            "heldout_calls_to_untrained_tools_skipped": skipped}


def without_tool_descriptions(conv: Conversation) -> Conversation:
    """A copy with no tool schema left for the template to render: `tools` dropped, and any system turn that quotes
    a tool's description or schema (Glaive's 'You have access to the following functions' prompts)."""
    functions = [t.get("function", t) for t in conv.tools or []]
    quoted = [str(fn["description"]) for fn in functions if fn.get("description")] + [
        json.dumps(fn["parameters"], ensure_ascii=False) for fn in functions if fn.get("parameters")]
    turns = [t for t in conv.turns if not (t.role == "system" and any(q in t.content for q in quoted))]
    names = sorted({str(fn.get("name", "")) for fn in functions})
    return replace(conv, turns=turns, tools=None, meta={**conv.meta, "tools_hidden": names} if names else conv.meta)


def _groups_by_first_message(convs: list[Conversation], spec: DataSpec) -> dict[str, list[Conversation]]:
    """Conversations grouped by their normalised first user message, in source order."""
    groups: dict[str, list[Conversation]] = {}
    for conv in convs:
        first = next((t.content for t in conv.turns if t.role == "user"), None)
        if first is None:
            raise DataError("a tool-calling conversation needs a user message", source=spec.path, record=conv.id,
                            field="messages", reason="no user message")
        groups.setdefault(normalize(first), []).append(conv)
    return groups


def _scorable(conv: Conversation) -> bool:
    """Whether the first reply can be scored: no call, or a call whose own arguments pass its schema."""
    first = first_reply_index(conv)
    calls = conv.turns[first].tool_calls if first is not None else None
    return not calls or not argument_error(calls[0], calls[0], conv.tools)


def _called(convs: list[Conversation]) -> set[str]:
    """Names of every function the conversations call."""
    return {call["name"] for c in convs for t in c.turns for call in t.tool_calls or []}


def _split(groups: dict[str, list[Conversation]], n_heldout: int, rng: random.Random,
           spec: DataSpec) -> tuple[list[Conversation], list[Conversation], int]:
    """(held out: one scorable conversation from each of `n_heldout` groups, stratified by whether the first reply
    calls a tool; train: every conversation of the other groups; how many call candidates were passed over). A
    held-out call is only to a function the training data still calls: a model never shown a tool's description
    can know only the tools it was trained on. Duplicates of a held-out message are not used."""
    keys = list(groups)
    rng.shuffle(keys)
    candidates = {kind: [k for k in keys if _scorable(groups[k][0]) and expects_call(groups[k][0]) == kind]
                  for kind in (True, False)}
    available = len(candidates[True]) + len(candidates[False])
    if n_heldout >= len(keys) or n_heldout > available:
        raise ConfigError(f"toolcall_split: heldout={n_heldout} leaves no training data: {spec.path} has "
                          f"{len(keys)} distinct first user messages ({available} scorable)")
    n_call = min(len(candidates[True]), round(n_heldout * len(candidates[True]) / available))
    n_call = max(n_call, n_heldout - len(candidates[False]))
    no_calls = set(candidates[False][:n_heldout - n_call])
    trained = Counter(name for k in keys if k not in no_calls for name in _called(groups[k]))  # groups calling each
    calls: list[str] = []
    skipped = 0
    for k in candidates[True]:
        if len(calls) == n_call:
            break
        if trained[_first_call_name(groups[k][0])] > 1:  # another group, left in training, calls it too
            calls.append(k)
            trained.subtract(_called(groups[k]))
        else:
            skipped += 1
    if len(calls) < n_call:
        raise ConfigError(f"toolcall_split: heldout={n_heldout} needs {n_call} conversations whose first reply calls "
                          f"a tool that the training data also calls; {spec.path} has {len(calls)}: ask for fewer")
    chosen = no_calls | set(calls)
    held = [groups[k][0] for k in keys if k in chosen]
    train = [c for k in keys if k not in chosen for c in groups[k]]
    return held, train, skipped


def _first_call_name(conv: Conversation) -> str:
    return conv.turns[first_reply_index(conv)].tool_calls[0]["name"]
