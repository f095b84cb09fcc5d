"""A SQLite cache of generations keyed by (model, prompt, sampling params, seed).

Curation re-runs and evaluation re-runs on the same model never pay for a generation twice. `CachedGenerator`
puts the cache in front of any engine, prompt by prompt, so a rerun with one new prompt generates only that one.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from sftlab.data.schema import Conversation
from sftlab.generation.base import Generation, Generator, Messages, SamplingParams, as_messages
from sftlab.kvstore import SqliteKV, stable_key

__all__ = ["CachedGenerator", "GenerationCache", "stable_key"]


class GenerationCache(SqliteKV):
    """`also_read`: other caches consulted (read-only) on a miss, e.g. the run a recipe builds on; a hit there is
    copied here, so this cache stays complete on its own."""

    def __init__(self, path: str | Path, also_read: list[Path] = ()) -> None:
        super().__init__(path, "gen")
        self.path = Path(path)
        self.hits = self.misses = 0
        self.others = [_read_only(p) for p in also_read if Path(p).is_file() and Path(p) != self.path]

    def get(self, key: str) -> list[Generation] | None:
        value = self.get_many([key]).get(key)
        for other in self.others if value is None else []:
            row = other.execute("select value from gen where key = ?", (key,)).fetchone()
            if row:
                value = json.loads(row[0])
                self.put_many({key: value})
                break
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        return [Generation(**g) for g in value]

    def put(self, key: str, gens: list[Generation]) -> None:
        self.put_many({key: [g.to_dict() for g in gens]})


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, check_same_thread=False)


# In tool prompts' keys since the HTTP engine kept structured tool calls (43ec8d2): before, a server's call was
# cached as an empty, unfinished reply under the same messages and tools, and a rerun would be served it again.
_TOOL_REPLIES_KEPT = "tool_calls kept"


class CachedGenerator:
    """Any `Generator` behind a `GenerationCache`; `cache_id` names the model version (e.g. path + weights hash)."""

    def __init__(self, generator: Generator, cache: GenerationCache, cache_id: str | None = None) -> None:
        self.generator, self.cache = generator, cache
        self.model_id = generator.model_id
        self.cache_id = cache_id or generator.model_id
        self.context_window = getattr(generator, "context_window", None)

    def _key(self, prompt: Messages | Conversation, params: SamplingParams) -> str:
        """A Conversation's tools are part of its prompt (other tools, another answer); without tools the key is the
        messages' as before, so earlier caches still answer."""
        tools = prompt.tools if isinstance(prompt, Conversation) else None
        return stable_key(self.cache_id, as_messages(prompt), params.to_dict(),
                          *([tools, _TOOL_REPLIES_KEPT] if tools else []))

    def generate(self, prompts: list[Messages | Conversation], params: SamplingParams) -> list[list[Generation]]:
        out: list[list[Generation] | None] = [self.cache.get(self._key(p, params)) for p in prompts]
        todo = [i for i, o in enumerate(out) if o is None]
        if todo:
            for i, gens in zip(todo, self.generator.generate([prompts[i] for i in todo], params), strict=True):
                self.cache.put(self._key(prompts[i], params), gens)
                out[i] = gens
        return out  # type: ignore[return-value]
