"""The loop every generation-driven curation pipeline shares: resume, cache, batch, isolate failures, report."""

from __future__ import annotations

import math
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sftlab.curate.store import CurationFiles, ResumableJsonl
from sftlab.data.schema import Conversation, Turn
from sftlab.errors import ConfigError, SftlabError
from sftlab.generation.base import Generation, GenerationError, Generator, Messages, SamplingParams, as_messages
from sftlab.generation.cache import CachedGenerator, GenerationCache
from sftlab.kvstore import stable_key


@dataclass
class PromptItem:
    """One prompt to curate: its messages, where it came from, and an optional reference answer."""

    key: str
    source_id: str
    messages: Messages
    conv: Conversation  # the source conversation (with the added system turn): its tools are part of the prompt
    reference: str | None = None

    @property
    def prompt(self) -> Messages | Conversation:
        """What the engine answers: with tools the Conversation, so the teacher is shown them as training renders
        them (messages alone dropped them); without, the messages as before."""
        return self.conv if self.conv.tools else self.messages


@dataclass
class RunStats:
    prompts: int = 0
    already_done: int = 0
    processed: int = 0
    records: int = 0
    samples: int = 0
    generated_tokens: int = 0
    skipped: Counter = field(default_factory=Counter)
    cache_hits: int = 0
    seconds: float = 0.0
    records_in_file: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        s = max(self.seconds, 1e-9)
        return {"prompts": self.prompts, "already_done": self.already_done, "processed": self.processed,
                "records_written": self.records, "records_in_file": self.records_in_file,
                "samples": self.samples, "skipped": dict(self.skipped),
                "cache_hits": self.cache_hits, "seconds": round(self.seconds, 1),
                "samples_per_s": round(self.samples / s, 2), "tokens_per_s": round(self.generated_tokens / s, 1),
                **self.extra}


def check_sampling(params: SamplingParams, n_name: str = "n") -> None:
    """Refuse sampling settings that cannot mean what was asked (one place for every curation pipeline)."""
    problems = []
    if not isinstance(params.n, int) or params.n < 1:
        problems.append(f"{n_name} {params.n}: must be at least 1 (replies per prompt)")
    if params.max_new_tokens < 1:
        problems.append(f"max_new_tokens {params.max_new_tokens}: must be at least 1")
    if not math.isfinite(params.temperature) or params.temperature < 0:
        problems.append(f"temperature {params.temperature}: must be >= 0 (0 = greedy)")
    if not (0 < params.top_p <= 1):  # also refuses NaN
        problems.append(f"top_p {params.top_p}: must be in (0, 1]")
    if isinstance(params.n, int) and params.n > 1 and params.temperature == 0:
        problems.append(f"{n_name} {params.n} at temperature 0: greedy decoding gives {params.n} identical replies; "
                        f"set temperature > 0 or {n_name} 1")
    if problems:
        raise ConfigError("; ".join(problems))


def check_batch_size(batch_size: int) -> None:
    """Zero prompts per batch would never finish (and used to fail with a bare range() error)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size}: must be at least 1")


def engine_id(model: str, adapter: str | None = None, base_url: str | list[str] | None = None) -> str:
    """Which weights answer: model and adapter, local weights with a size/mtime fingerprint, so a retrained adapter
    at the same path is a different generator (for the cache and the run's settings). For endpoints the served
    model name, not the URLs: any endpoint serving that model gives the same output, so a run may resume on
    another set of endpoints (e.g. without the one that went down)."""
    from sftlab.models.fingerprint import weights_fingerprint

    def named(spec: str) -> str:
        return f"{spec} (weights {weights_fingerprint(spec)})" if Path(spec).exists() else spec

    return " + ".join([f"endpoint model {model}" if base_url else named(model),
                       *([named(adapter)] if adapter else [])])


def check_output(out_path: str | Path, settings: dict[str, Any], inputs: Iterable[str | Path] = ()) -> None:
    """Refuse a bad --out before loading any model (the writer checks again when it opens the file)."""
    CurationFiles(Path(out_path)).check(settings, inputs)


def prompt_items(convs: list[Conversation], system_prompt: str | None = None) -> list[PromptItem]:
    """Prompts (Conversation.prompt_turns) with a final assistant turn as the reference, keyed stably."""
    items = []
    for c in convs:
        msgs = as_messages(c)
        if system_prompt and (not msgs or msgs[0]["role"] != "system"):
            c = Conversation([Turn("system", system_prompt), *c.turns], c.id, c.tools, c.meta)
            msgs = as_messages(c)
        ref = c.turns[-1].content if c.turns and c.turns[-1].role == "assistant" else None
        items.append(PromptItem(stable_key(c.id, msgs), c.id, msgs, c, ref))
    return items


class CurationRun:
    """Drive `generator` over `items`, `batch_size` prompts at a time; `handle(item, generations)` returns the
    records to write for one prompt. Finished prompts are skipped on restart; a batch that fails is retried
    prompt by prompt so one bad prompt is a counted skip, while an engine that is down stops the run with
    a clear error and every finished prompt already on disk.

    `settings` is everything that changes the output (engine, params, pipeline options): an existing output made
    with other settings is refused, never mixed. `generator_id` names the engine's weights (see `engine_id`);
    `inputs` are the files read, which the output may never be. A prompt repeated in the input (same key: same
    record id and messages) is curated once and the repeats are counted as "duplicate prompt"."""

    def __init__(self, generator: Generator, params: SamplingParams, out_path: str | Path,
                 cache: GenerationCache | None = None, batch_size: int = 16, console: Console | None = None,
                 max_prompt_tokens: int | None = None, settings: dict[str, Any] | None = None,
                 generator_id: str | None = None, inputs: Iterable[str | Path] = (), n_name: str = "n") -> None:
        check_sampling(params, n_name)
        check_batch_size(batch_size)
        self.params, self.cache = params, cache
        # the shared cache in front of the engine, keyed by the engine's weights, the prompt and the params
        self.generator = CachedGenerator(generator, cache, generator_id) if cache else generator
        self.writer = ResumableJsonl(out_path, settings, inputs)
        self.batch_size = batch_size
        self.console = console or Console(stderr=True)
        self.stats = RunStats()
        window = getattr(generator, "context_window", None)
        self.max_prompt_tokens = max_prompt_tokens or (window - params.max_new_tokens if window else None)

    def _generate(self, items: list[PromptItem]) -> list[list[Generation] | Exception]:
        try:
            return self._generate_isolated(items)
        except sqlite3.Error as e:  # e.g. a full disk under the cache: say which file, keep what is done
            raise SftlabError(f"generation cache {getattr(self.cache, 'path', '')}: {e}; the "
                              f"{self.writer.records} records of finished prompts in {self.writer.path} are kept: "
                              "fix the cause (or pass --no-cache) and re-run the same command to resume") from None

    def _generate_isolated(self, items: list[PromptItem]) -> list[list[Generation] | Exception]:
        hits = self.cache.hits if self.cache else 0
        try:
            out: list = self.generator.generate([it.prompt for it in items], self.params)
        except GenerationError:
            out = []
            for it in items:  # isolate the failing prompt(s)
                try:
                    out.append(self.generator.generate([it.prompt], self.params)[0])
                except GenerationError as e:
                    out.append(e)
            if all(isinstance(g, Exception) for g in out):
                raise GenerationError(f"generation failed for every prompt of a batch ({out[0]}); "
                                      f"{self.writer.records} records of finished prompts are saved in "
                                      f"{self.writer.path}; re-run the same command to resume") from None
        if self.cache:
            self.stats.cache_hits += self.cache.hits - hits
        return out

    def run(self, items: list[PromptItem], handle: Callable[[PromptItem, list[Generation]], list[dict[str, Any]]],
            encode: Callable[[Messages | Conversation], list[int]] | None = None) -> RunStats:
        t0 = time.time()
        self.stats.prompts = len(items)
        pending, seen = [], set()
        for it in items:
            if it.key in seen:
                self.stats.skipped["duplicate prompt"] += 1
                continue
            seen.add(it.key)
            if it.key in self.writer.done:
                self.stats.already_done += 1
            elif not any(m["content"].strip() for m in it.messages if m["role"] == "user"):
                self.stats.skipped["empty prompt"] += 1
            elif encode and self.max_prompt_tokens and len(encode(it.prompt)) > self.max_prompt_tokens:
                self.stats.skipped["prompt longer than the context window"] += 1
            else:
                pending.append(it)
        try:
            self._curate(pending, handle, t0)
        finally:
            self.stats.seconds = time.time() - t0
            self.stats.records_in_file = self.writer.records
            self.writer.close()
        return self.stats

    def _curate(self, pending: list[PromptItem],
                handle: Callable[[PromptItem, list[Generation]], list[dict[str, Any]]], t0: float) -> None:
        """Generate, handle and write the pending prompts batch by batch, each prompt's records as one group."""
        with Progress(TextColumn("[bold]curate"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]} samples/s"), TimeElapsedColumn(), TextColumn("eta"),
                      TimeRemainingColumn(), console=self.console) as bar:
            task = bar.add_task("curate", total=len(pending), rate="-")
            for start in range(0, len(pending), self.batch_size):
                batch = pending[start:start + self.batch_size]
                for it, gens in zip(batch, self._generate(batch), strict=True):
                    if isinstance(gens, Exception):
                        self.stats.skipped["generation failed"] += 1
                        continue
                    self.stats.samples += len(gens)
                    self.stats.generated_tokens += sum(g.n_tokens for g in gens)
                    records = handle(it, gens)
                    if records:
                        self.writer.write_group(it.key, records)
                    else:
                        self.writer.mark_done(it.key)
                    self.stats.records += len(records)
                    self.stats.processed += 1
                bar.update(task, advance=len(batch), rate=f"{self.stats.samples / max(1e-9, time.time() - t0):.2f}")


def output_record(item: PromptItem, gen: Generation, generator: Generator, params: SamplingParams, index: int,
                  **meta: Any) -> dict[str, Any]:
    """An ordinary SFT record (`messages`) plus its provenance."""
    conv = Conversation(turns=[*item.conv.prompt_turns], tools=item.conv.tools)
    # a call the engine returned structured goes in the turn's tool_calls, as a dataset's calls do
    msgs = [*item.messages, Turn("assistant", gen.text, tool_calls=gen.tool_calls).to_dict()]
    rec: dict[str, Any] = {"id": f"{item.source_id}-{index}", "messages": msgs}
    if conv.tools:
        rec["tools"] = conv.tools
    rec["meta"] = {"key": item.key, "source_id": item.source_id, "generator": generator.model_id,
                   "params": params.to_dict(), "sample_index": index, "finished": gen.finished,
                   "n_tokens": gen.n_tokens, **meta}
    return rec
