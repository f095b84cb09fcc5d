"""The work queue of `sftlab serve`: one worker thread owns the model and its tokenizer (not safe to share between
threads); requests wait in a bounded queue and compatible ones run as one batch, so the event loop never blocks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from sftlab.errors import TemplateError
from sftlab.generation.base import SamplingParams
from sftlab.serve.chat import stream_reply
from sftlab.serve.validation import BadRequest, ChatRequest, fit_context

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 60


class QueueFull(Exception):
    """More requests are waiting than `max_queue` allows; the client should retry after `retry_after` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy: {retry_after} s")
        self.retry_after = retry_after



@dataclass(eq=False)
class Job:
    """One request on its way through the queue; the worker reports to it through `events` (thread-safe)."""

    request: ChatRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_ids: list[int] | None = None
    params: SamplingParams | None = None  # after fitting the context window

    @property
    def batch_key(self) -> tuple | None:
        """Jobs with equal keys can share one engine call; None runs alone."""
        p = self.params or self.request.params
        if self.request.stream or not self.request.batchable:
            return None
        if p.temperature == 0:
            return ("greedy", p.max_new_tokens)
        return ("sample", p.max_new_tokens, p.temperature, p.top_p, p.n)  # unseeded: the batch takes one job's seed

    def post(self, kind: str, value: Any = None) -> None:
        """Hand an event to the request's event loop (from the worker thread)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class GenerationQueue:
    """A bounded queue in front of one worker thread that owns the model (and its tokenizer, which is not safe
    to share between threads); compatible waiting requests run as one batch."""

    def __init__(self, generator, max_queue: int, max_batch: int) -> None:
        self.generator, self.max_queue, self.max_batch = generator, max_queue, max_batch
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.running = 0  # jobs in the batch being generated
        self._batch_seconds = 1.0  # running mean, for Retry-After

    @property
    def queued(self) -> int:
        return len(self._pending)

    def submit(self, job: Job) -> None:
        """Queue a job, or raise QueueFull when `max_queue` requests already wait."""
        with self._cond:
            if self._stopping:
                raise QueueFull(self.retry_after())
            if len(self._pending) >= self.max_queue:
                raise QueueFull(self.retry_after())
            self._pending.append(job)
            self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="sftlab-serve-worker", daemon=True)
                self._thread.start()

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by one batch's worth: a hint, in [1, 60]."""
        waves = 1 + len(self._pending) // self.max_batch
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(self._batch_seconds * waves)))

    def stop(self) -> None:
        """Refuse new work and fail what still waits (server shutdown)."""
        with self._cond:
            self._stopping = True
            waiting, self._pending = list(self._pending), deque()
            self._cond.notify_all()
        for job in waiting:
            job.post("error", BadRequest("the server is shutting down", status=503))

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            started = time.perf_counter()
            self.running = len(batch)
            try:
                self._run(batch)
            except Exception as e:  # never let the worker die: every later request would hang
                log.exception("generation failed")
                for job in batch:
                    job.post("error", e)
            finally:
                self.running = 0
                self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (time.perf_counter() - started)

    def _next_batch(self) -> list[Job] | None:
        """The oldest waiting job and the waiting jobs that can share its engine call; None when stopping."""
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                first = self._pending.popleft()
                key = first.batch_key
                mates = [j for j in self._pending if key is not None and j.batch_key == key][: self.max_batch - 1]
                for j in mates:
                    self._pending.remove(j)
            batch = [j for j in [first, *mates] if self._prepare(j)]
            fitting = [j for j in batch if j.batch_key == batch[0].batch_key] if batch else []
            self._requeue([j for j in batch if j not in fitting])
            if fitting:
                return fitting

    def _requeue(self, jobs: list[Job]) -> None:
        """Put back, at the front, jobs whose budget shrank to fit the context (they no longer share the key)."""
        with self._cond:
            self._pending.extendleft(reversed(jobs))

    def _prepare(self, job: Job) -> bool:
        """Tokenize and fit the context window; a failure answers the job with its error."""
        if job.prompt_ids is not None:
            return True
        if job.cancelled.is_set():
            return False
        try:
            ids = self.generator.encode(job.request.messages)
            job.params = fit_context(job.request, len(ids), getattr(self.generator, "context_window", None))
        except (BadRequest, TemplateError) as e:  # the template refused these messages (e.g. role order)
            job.post("error", e if isinstance(e, BadRequest) else BadRequest(str(e), "messages"))
            return False
        except Exception as e:  # must not escape: it would end the worker thread and hang every later request
            log.exception("tokenizing a request failed")
            job.post("error", e)
            return False
        job.prompt_ids = ids
        job.post("start", len(ids))
        return True

    def _run(self, batch: list[Job]) -> None:
        if batch[0].request.stream:
            self._stream(batch[0])
            return
        replies = self.generator.generate([j.request.messages for j in batch], batch[0].params,
                                          should_stop=lambda: all(j.cancelled.is_set() for j in batch))
        for job, gens in zip(batch, replies, strict=True):
            job.post("done", [g for g in gens for _ in range(job.request.copies)])

    def _stream(self, job: Job) -> None:
        """Tokens go to the response as they are decoded; a closed connection stops the generation."""
        if job.params.temperature > 0:
            torch.manual_seed(job.params.seed)
        n_tokens, finished = stream_reply(self.generator, job.prompt_ids, job.params,
                                          lambda text: job.post("text", text), should_stop=job.cancelled.is_set)
        job.post("done", (n_tokens, finished))
