"""Distillation: a stronger teacher answers the prompts; the student will imitate the answers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console

from sftlab.curate.runner import CurationRun, PromptItem, RunStats, output_record, prompt_items
from sftlab.data.schema import Conversation
from sftlab.generation.base import Generation, Generator, SamplingParams
from sftlab.generation.cache import GenerationCache


def distill_settings(generator_id: str, params: SamplingParams, system_prompt: str | None = None,
                     keep_unfinished: bool = False) -> dict[str, Any]:
    """Everything that changes a distillation's output: a resumed run must have exactly these."""
    return {"pipeline": "distill", "generator": generator_id, "system_prompt": system_prompt,
            "keep_unfinished": keep_unfinished, **params.to_dict()}


def distill(prompts: list[Conversation], teacher: Generator, out_path: str | Path, params: SamplingParams,
            system_prompt: str | None = None, keep_unfinished: bool = False, cache: GenerationCache | None = None,
            batch_size: int = 16, console: Console | None = None, generator_id: str | None = None,
            inputs: Iterable[str | Path] = ()) -> RunStats:
    """Write `params.n` teacher replies per prompt to `out_path` (JSONL `messages` + provenance), resumably.

    Replies that hit the token budget without ending their turn are dropped (counted) unless
    keep_unfinished: a truncated reply teaches the student to stop mid-sentence. `generator_id` names the
    teacher's weights (default its model_id); `inputs` are the files the prompts came from.
    """
    gid = generator_id or teacher.model_id
    run = CurationRun(teacher, params, out_path, cache, batch_size, console,
                      settings=distill_settings(gid, params, system_prompt, keep_unfinished), generator_id=gid,
                      inputs=inputs)
    encode = getattr(teacher, "encode", None)

    def handle(item: PromptItem, gens: list[Generation]) -> list[dict]:
        out = []
        for j, g in enumerate(gens):
            if g.tool_call_error:  # e.g. arguments that are not JSON: a record would fail validation
                run.stats.skipped["invalid tool call"] += 1
            elif not g.text.strip() and not g.tool_calls:
                run.stats.skipped["empty reply"] += 1
            elif not g.finished and not keep_unfinished:
                run.stats.skipped["reply hit max_new_tokens"] += 1
            else:
                out.append(output_record(item, g, teacher, params, j, pipeline="distill"))
        return out

    return run.run(prompt_items(prompts, system_prompt), handle, encode)
