"""One interface for a curation stage: records in, the kept ones out, each dropped one with a structured reason.

A stage is a small object with a `name` (its funnel row) and `run(records, log) -> StageResult`. It never
mutates a record to drop it and never writes files: the pipeline applies the drops (`PoolRecord.stage/reason/
detail/duplicate_of`), counts them per reason for the funnel and writes the outputs, so a pipeline is a plain list
of stages. `run` keeps the kept records in the order it chose (a selection stage returns them ranked).

The coming `sftlab run` recipe runner can drive distill and best-of-k through the same interface: a distill stage
is records (prompts) in, records with the teacher's reply out, dropping `Drop("reply did not finish")`; a
best-of-k stage is prompts in, the best-scoring sample out, dropping `Drop("no sample reached min_score")`. The
interface is generic over the record type for that reason; a stage that needs a model loads it inside `run`, so
listing stages costs nothing and a recipe can chain generation and filtering stages in one list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

R = TypeVar("R")
Log = Callable[[str], Any]


@dataclass(frozen=True)
class Drop(Generic[R]):
    """Why a stage dropped a record: `reason` is the category counted in the funnel, `detail` the specifics
    (which eval text it overlaps), `duplicate_of` the record it repeats."""

    reason: str
    detail: str = ""
    duplicate_of: R | None = None


@dataclass
class StageResult(Generic[R]):
    """What a stage did: kept records (in its order), dropped ones with their reasons, funnel extras (settings
    or counts worth reporting) and artefacts for the report (e.g. the embeddings of a selection stage)."""

    kept: list[R]
    dropped: list[tuple[R, Drop[R]]] = field(default_factory=list)
    funnel_extra: dict[str, Any] = field(default_factory=dict)
    artefacts: dict[str, Any] = field(default_factory=dict)


class Stage(Protocol[R]):
    """A curation step; `runs_on_empty` False skips it (and its funnel row) when no record is left."""

    name: str
    runs_on_empty: bool

    def run(self, records: list[R], log: Log) -> StageResult[R]:
        ...


def partition(records: list[R], why: Callable[[R], Drop[R] | None]) -> StageResult[R]:
    """A stage that judges each record alone: kept where `why` returns None, dropped with its Drop otherwise."""
    result: StageResult[R] = StageResult([])
    for r in records:
        drop = why(r)
        if drop is None:
            result.kept.append(r)
        else:
            result.dropped.append((r, drop))
    return result
