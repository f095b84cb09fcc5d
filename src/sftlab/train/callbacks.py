"""Trainer callbacks: a rich progress bar (loss, tokens/s, ETA) and a metrics JSONL file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from sftlab.data.writers import atomic_open
from sftlab.train.distributed import is_main_process, sum_over_processes


class TokenCounter:
    """Counts tokens the trainer has processed, over all processes once `sync` has run; shared by the callbacks.
    Each process counts its own micro-batches; `sync` (every optimizer step) adds the others' counts."""

    def __init__(self) -> None:
        self.tokens = 0  # non-padding tokens
        self.trained = 0  # response tokens (carry loss)
        self.computed = 0  # positions run through the model, padding included
        self.start = time.time()
        self.tokens_at_start = 0  # a resumed run starts from the checkpoint's counts
        self._synced = (0, 0, 0)  # the counts, all processes summed, at the last sync

    def snapshot(self) -> tuple[int, int, int]:
        return self.tokens, self.trained, self.computed

    def restore(self, counts: tuple[int, int, int]) -> None:
        """Set the counts: the checkpoint's on resume, or the step's start to undo the counting of a step that is
        redone (e.g. eagerly, after a compiler failure)."""
        self.tokens, self.trained, self.computed = counts
        self._synced = tuple(counts)

    def sync(self, device="cpu") -> None:
        """Add what the other processes counted since the last sync (nothing to add on one process)."""
        new = [now - then for now, then in zip(self.snapshot(), self._synced, strict=True)]
        added = sum_over_processes(new, device)
        self.restore(tuple(then + more for then, more in zip(self._synced, added, strict=True)))

    def padding_share(self) -> float:
        return 1 - self.tokens / self.computed if self.computed else 0.0

    def begin(self) -> None:
        """Throughput counts this process's training, not model loading nor the steps before a resume."""
        self.start = time.time()
        self.tokens_at_start = self.tokens

    def rate(self) -> float:
        return (self.tokens - self.tokens_at_start) / max(1e-9, time.time() - self.start)


class TokenCounterState(TrainerCallback, ExportableState):
    """Saves the token counts inside each checkpoint's trainer_state.json (written last, so a checkpoint that is
    complete has them): a resumed run goes on counting from there instead of from 0."""

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter

    def state(self) -> dict:
        tokens, trained, computed = self.counter.snapshot()
        return {"args": {}, "attributes": {"tokens": tokens, "trained": trained, "computed": computed}}

    @staticmethod
    def saved_counts(trainer_state: dict) -> tuple[int, int, int] | None:
        """The counts a checkpoint's trainer_state.json holds (None for checkpoints saved without them)."""
        saved = (trainer_state.get("stateful_callbacks") or {}).get(TokenCounterState.__name__)
        attrs = saved.get("attributes") if isinstance(saved, dict) else None
        if not isinstance(attrs, dict):
            return None
        return int(attrs.get("tokens", 0)), int(attrs.get("trained", 0)), int(attrs.get("computed", 0))

    def on_step_end(self, args, state, control, **kwargs):
        self.counter.sync(args.device)


def truncate_metrics(path: Path, last_step: int) -> int:
    """Keep the log rows of steps up to `last_step` (a resume redoes the later ones), atomically; a torn last
    line (a kill mid-write) goes too. Returns how many rows were dropped. Process 0 alone writes the log."""
    if not path.exists() or not is_main_process():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line).get("step", 0)
        except (ValueError, AttributeError):
            step = None
        if isinstance(step, int) and step <= last_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        with atomic_open(path) as f:
            f.write("".join(line + "\n" for line in kept))
    return dropped


def resident_mb() -> int:
    """The process's resident memory now (what a CPU run's peak memory is read from)."""
    import psutil  # a dependency of accelerate

    return round(psutil.Process().memory_info().rss / 2**20)


class MetricsLogger(TrainerCallback):
    """Appends every Trainer log (loss, learning rate, grad norm) plus throughput and memory to metrics.jsonl."""

    def __init__(self, path: Path, counter: TokenCounter) -> None:
        self.path, self.counter = path, counter

    def on_train_begin(self, args, state, control, **kwargs):
        self.counter.begin()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, **logs,
               "tokens_seen": self.counter.tokens, "trained_tokens_seen": self.counter.trained,
               "tokens_per_s": round(self.counter.rate(), 2), "elapsed_s": round(time.time() - self.counter.start, 2),
               "rss_mb": resident_mb()}
        if torch.cuda.is_available():
            row["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


class RichProgress(TrainerCallback):
    """Progress bar with step, loss, tokens/s and ETA."""

    def __init__(self, counter: TokenCounter, console: Console | None = None) -> None:
        self.counter = counter
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                           loss="-", tps="-")

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Trainer logs a step's loss after `on_step_end`: shown here, it is the logged one (never 'nan' for a
        1-step run, never the step before's)."""
        if self.progress and logs and "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.4f}")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.update(self.task, completed=state.global_step, tps=f"{self.counter.rate():.0f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.stop()
            self.progress = None


class ReleaseFreedMemory(TrainerCallback):
    """Hand freed heap pages back to the OS after every optimizer step (glibc `malloc_trim`).

    On CPU, each step frees gigabytes of activations and loss buffers of varying sizes; glibc keeps them in its
    arenas, so resident memory ratchets up step after step (measured: +1 GB per step on gemma-3-270m full
    fine-tuning) although live tensors do not grow. Trimming at step boundaries keeps the peak at what one step
    needs. A no-op where glibc is not the allocator (macOS, musl); not used when training on a GPU, where the
    activations live in the GPU's own caching allocator."""

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        self._trim = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            self._trim = libc.malloc_trim
        except (OSError, AttributeError):
            pass

    def on_step_end(self, args, state, control, **kwargs):
        if self._trim is not None:
            self._trim(0)


def log_tensorboard_to(trainer, folder: Path) -> None:
    """TensorBoard events (transformers' own TensorBoardCallback, on when `report_to` names tensorboard) go to
    `folder` (the run's tb/) instead of transformers' default checkpoints/runs/<date>; TENSORBOARD_LOGGING_DIR,
    when set, still wins."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(folder)
