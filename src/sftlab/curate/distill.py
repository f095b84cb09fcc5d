"""Distillation: a stronger teacher answers the prompts; the student will imitate the answers."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from sftlab.curate.runner import CurationRun, PromptItem, RunStats, output_record, prompt_items
from sftlab.curate.store import GenerationCache
from sftlab.data.schema import Conversation
from sftlab.generation.base import Generation, Generator, SamplingParams


def distill(prompts: list[Conversation], teacher: Generator, out_path: str | Path, params: SamplingParams,
            system_prompt: str | None = None, keep_unfinished: bool = False, cache: GenerationCache | None = None,
            batch_size: int = 16, console: Console | None = None) -> RunStats:
    """Write `params.n` teacher replies per prompt to `out_path` (JSONL `messages` + provenance), resumably.

    Replies that hit the token budget without ending their turn are dropped (counted) unless
    keep_unfinished: a truncated reply teaches the student to stop mid-sentence.
    """
    run = CurationRun(teacher, params, out_path, cache, batch_size, console)
    encode = getattr(teacher, "encode", None)

    def handle(item: PromptItem, gens: list[Generation]) -> list[dict]:
        out = []
        for j, g in enumerate(gens):
            if not g.text.strip():
                run.stats.skipped["empty reply"] += 1
            elif not g.finished and not keep_unfinished:
                run.stats.skipped["reply hit max_new_tokens"] += 1
            else:
                out.append(output_record(item, g, teacher, params, j, pipeline="distill"))
        return out

    return run.run(prompt_items(prompts, system_prompt), handle, encode)
