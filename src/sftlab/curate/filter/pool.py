"""The pool the filter works on: every source record once, with the prompt and reply text the stages compare.

A million-record pool must fit in bounded memory, so a record read by `read_pool` keeps only what the funnel and
the report need (id, source, location, decision, scores: ~0.4 KB) and its text lives in a `TextStore`, an
anonymous temporary file read back (pread) when a stage asks for `prompt`, `response` or `conv`.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from sftlab.data.loading import DataSpec, LoadReport, iter_conversations, make_spec
from sftlab.data.schema import Conversation
from sftlab.data.sql import source_name

_ENCODING = ("utf-8", "surrogatepass")  # JSON text may hold lone surrogates; they round-trip unchanged


class TextStore:
    """Prompt, response and conversation (pickled: it comes back exactly, whatever its `meta` holds) of each
    record in a temporary file the OS removes on close: 24 bytes of offsets a record in memory instead of its text
    and the Python objects around it."""

    PARTS = 3

    def __init__(self, folder: Path | None = None) -> None:
        # unlinked at once (nothing is left behind); in `folder`, the output's disk, not a /tmp that may be RAM
        self._file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 (open for the store's life)
        self._bounds = array("q", [0])

    def add(self, prompt: str, response: str, conv: Conversation) -> None:
        for data in (prompt.encode(*_ENCODING), response.encode(*_ENCODING), pickle.dumps(conv, protocol=5)):
            self._file.write(data)
            self._bounds.append(self._bounds[-1] + len(data))

    def seal(self) -> None:
        """Done adding: what was written can be read (with pread, not mmap, whose pages would count as the
        process's memory)."""
        self._file.flush()

    def _read(self, index: int, part: int) -> bytes:
        k = index * self.PARTS + part
        start, end = self._bounds[k], self._bounds[k + 1]
        return os.pread(self._file.fileno(), end - start, start) if end > start else b""

    def text(self, index: int, part: int) -> str:
        return self._read(index, part).decode(*_ENCODING)

    def conversation(self, index: int) -> Conversation:
        return pickle.loads(self._read(index, 2))  # noqa: S301 (this store's own file, written above)


class PoolRecord:
    """One pool record and the filter's decision on it; its text is held here (tests, small pools) or read
    from the pool's `TextStore` by index."""

    __slots__ = ("index", "id", "source", "scores", "stage", "reason", "detail", "duplicate_of", "location",
                 "_conv", "_prompt", "_response", "_store")

    def __init__(self, index: int, id: str, source: str, conv: Conversation | None = None, prompt: str = "",
                 response: str = "", scores: dict[str, float | None] | None = None, location: str = "",
                 store: TextStore | None = None) -> None:
        self.index, self.id, self.source, self.location = index, id, source, location
        self.scores: dict[str, float | None] = scores if scores is not None else {}
        self.stage = ""  # the stage that dropped it ("" = alive / selected)
        self.reason = ""  # the category counted in the funnel
        self.detail = ""  # the specifics, where there are any (which eval text it overlaps)
        self.duplicate_of: str | None = None
        self._conv, self._prompt, self._response, self._store = conv, prompt, response, store

    @property
    def prompt(self) -> str:
        return self._store.text(self.index, 0) if self._store else self._prompt

    @property
    def response(self) -> str:
        return self._store.text(self.index, 1) if self._store else self._response

    @property
    def conv(self) -> Conversation:
        return self._store.conversation(self.index) if self._store else self._conv


def prompt_text(conv: Conversation) -> str:
    """The text a record asks (system, user and tool turns): what dedup, decontamination and diversity compare."""
    return "\n".join(t.content for t in conv.prompt_turns if t.role in ("system", "user", "tool"))


def read_pool(pool: list[DataSpec], folder: Path | None = None) -> tuple[list[PoolRecord], Counter,
                                                                         list[dict[str, Any]]]:
    """Every valid record of every source with a unique id, streamed into one `TextStore` (its file in `folder`);
    the skip counts and per-source reports beside."""
    records: list[PoolRecord] = []
    store = TextStore(folder)
    seen: dict[str, int] = {}
    skipped: Counter = Counter()
    sources = []
    for spec in pool:
        spec = make_spec(spec)
        rep = LoadReport(source=source_name(spec.path, spec.type, spec.query))
        stem = Path(spec.path).name
        for j, c in enumerate(iter_conversations(spec, rep)):
            rid = c.id or f"{stem}:{j}"
            if rid in seen:  # readers derive ids from content: identical records would share one
                seen[rid] += 1
                rid = f"{rid}#{seen[rid]}"
            else:
                seen[rid] = 0
            store.add(prompt_text(c), c.last_response or "", c)
            records.append(PoolRecord(len(records), rid, stem, location=str(c.meta.get("location", f"record {j}")),
                                      store=store))
        skipped.update(rep.skipped)
        sources.append(rep.to_dict())
    store.seal()
    return records, skipped, sources
