"""The data that ships in sftlab/resources: identity conversations, teacher-distilled general answers, and the
held-out prompts (with teacher references) that no training file may contain. The demo and the recipes train on
the mix this module writes, with the held-out prompts removed by a case-, punctuation- and spacing-free match."""

from __future__ import annotations

import json
import random
from importlib.resources import files
from pathlib import Path

from sftlab.data.loading import DataSpec, load_conversations
from sftlab.data.schema import Conversation
from sftlab.data.writers import write_jsonl
from sftlab.textutil import words

RESOURCES = files("sftlab") / "resources"


def resource(name: str) -> Path:
    return Path(str(RESOURCES / name))


def heldout_prompts(kind: str) -> list[str]:
    """The shipped held-out prompts of one kind (identity | general), in no training file (a test checks it)."""
    lines = resource(f"heldout_{kind}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x)["prompt"] for x in lines if x.strip()]


def prompt_key(text: str) -> str:
    """Case-, punctuation- and spacing-insensitive form of a prompt, to keep held-out prompts out of training."""
    return " ".join(words(text))


def last_prompt(conv: Conversation) -> str:
    """The last user turn of a conversation (its prompt), or "" when it has none."""
    return conv.prompt_turns[-1].content if conv.prompt_turns else ""


IDENTITY_FILES = ("identity.jsonl", "identity_paraphrases.jsonl")  # hand-written; the teacher's rewrites of them


def shipped_training_sets(name: str, author: str) -> tuple[list[Conversation], list[Conversation]]:
    """(identity conversations with `name` and `author` filled in, distilled general answers in rank order)."""
    subs = {"name": name, "author": author}
    identity = [c for f in IDENTITY_FILES
                for c in load_conversations(DataSpec(path=str(resource(f)), substitutions=subs))[0]]
    return identity, load_conversations(DataSpec(path=str(resource("demo_general.jsonl"))))[0]


def write_shipped_mix(path: Path, name: str, author: str, *, identity_repeats: int = 1,
                      general_examples: int | None = None, extra_data: list[str] | None = None,
                      seed: int = 0) -> dict[str, int]:
    """Write a shuffled training set: the identity set `identity_repeats` times (0: none), the first
    `general_examples` distilled general answers (shipped in diversity-rank order; None: all) and any extra
    sources; every conversation with a held-out prompt in any user turn is left out. Returns the counts."""
    identity, general = shipped_training_sets(name, author)
    general = general[:general_examples] if general_examples else general
    extra: list[Conversation] = []
    for source in extra_data or []:
        subs = {"name": name, "author": author}
        extra += load_conversations(DataSpec(path=source, substitutions=subs, on_error="skip"))[0]
    held = {prompt_key(p) for p in heldout_prompts("identity") + heldout_prompts("general")}
    mix = identity * identity_repeats + general + extra
    train = [c for c in mix if not any(prompt_key(t.content) in held for t in c.turns if t.role == "user")]
    random.Random(seed).shuffle(train)
    write_jsonl(path, train)
    return {"identity": len(identity) * identity_repeats, "general": len(general), "extra": len(extra),
            "train": len(train), "left_out_as_heldout": len(mix) - len(train)}
