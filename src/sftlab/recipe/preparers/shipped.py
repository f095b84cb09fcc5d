"""Training sets made from the data that ships with sftlab (no ../shared needed)."""

from __future__ import annotations

from pathlib import Path

from sftlab.data.shipped import write_shipped_mix


def shipped_mix(out: Path, *, seed: int = 0, quick: bool = False, name: str = "Orca",
                author: str = "the sftlab team", identity_repeats: int = 1, general_examples: int | None = None,
                extra_data: list[str] | None = None) -> dict:
    """train.jsonl: shipped identity conversations (0 repeats: none) + teacher-distilled general answers."""
    return write_shipped_mix(out / "train.jsonl", name, author, identity_repeats=identity_repeats,
                             general_examples=8 if quick else general_examples, extra_data=extra_data, seed=seed)
