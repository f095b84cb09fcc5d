"""`sftlab serve`: OpenAI-compatible `/v1/chat/completions` (incl. streaming), `/v1/models` and `/health`.

Binds 127.0.0.1 unless told otherwise; optional API key (from an environment variable, compared in constant
time); request-size, max_tokens and context-window limits. Every error is an OpenAI-style JSON body: 4xx naming
the field for a bad request, 503 + Retry-After when the queue is full, 500 without a traceback for a server fault.

One worker thread owns the model and the tokenizer: requests wait in a bounded queue and are handed to it one
batch at a time (greedy requests, and sampled ones without a seed, that share their sampling parameters run
together), so the event loop never blocks and `/v1/models`, `/health` and auth answers stay fast under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sftlab.errors import ConfigError, TemplateError
from sftlab.generation.base import Generation, SamplingParams
from sftlab.serve.chat import stream_reply

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")
# OpenAI parameters this server cannot honour: accepted only with a value that changes nothing, else a 400
# (silently ignoring `stop` or `tools` would return output the client did not ask for).
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "stop": (None, "", []), "tools": (None, []), "functions": (None, []), "tool_choice": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}), "logprobs": (None, False), "top_logprobs": (None, 0),
    "logit_bias": (None, {}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
}
MAX_RETRY_AFTER_S = 60


class BadRequest(Exception):
    """A request the server refuses: HTTP status, message and the offending parameter."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


class QueueFull(Exception):
    """More requests are waiting than `max_queue` allows; the client should retry after `retry_after` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy: {retry_after} s")
        self.retry_after = retry_after


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
           code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """The OpenAI error shape, so every client library surfaces the message instead of a parse failure."""
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def _internal_error() -> JSONResponse:
    """A server fault: the details go to the server log, never into the response body."""
    return _error(500, "internal server error (details are in the server log)", kind="server_error")


# ---------------------------------------------------------------------------------------------- request parsing

@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    params: SamplingParams  # what the engine runs (n=1 for greedy: n identical replies are copies)
    copies: int  # replies per engine reply (n for greedy, else 1)
    stream: bool
    include_usage: bool
    max_tokens_given: bool  # False: the default budget may shrink to fit the context window
    batchable: bool  # False for seeded sampling: co-batched rows would draw different random numbers


def parse_body(raw: bytes) -> Any:
    """JSON, or a 400 (also for nesting deep enough to exhaust the parser's recursion)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise BadRequest("request body is not valid JSON") from None


def _content(message: dict[str, Any], i: int) -> str:
    """A message's text: a string, or a list of text parts (the only part type a text model can read)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest("content must be a string or a list of text parts", f"messages[{i}].content")
    texts = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if not isinstance(part, dict):
            raise BadRequest("a content part must be an object like {\"type\": \"text\", \"text\": \"...\"}", where)
        if part.get("type") != "text":
            raise BadRequest(f"only text content parts are supported, not {json.dumps(part.get('type'))}",
                             f"{where}.type")
        if not isinstance(part.get("text"), str):
            raise BadRequest("a text part's 'text' must be a string", f"{where}.text")
        texts.append(part["text"])
    return "".join(texts)


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest("each message needs a role of system, user, assistant or tool", f"messages[{i}].role")
        if m.get("tool_calls"):
            raise BadRequest("tool calls in messages are not supported by this server", f"messages[{i}].tool_calls")
        clean.append({"role": m["role"], "content": _content(m, i)})
    if clean[-1]["role"] == "assistant":
        raise BadRequest("the last message must not be from the assistant", "messages")
    return clean


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float, kind: type = float) -> Any:
    """A JSON number in [lo, hi] (an integer where kind is int); NaN, Infinity, strings and booleans are 400s."""
    v = body.get(name, default)
    if v is None:
        v = default
    ok = not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v) and lo <= v <= hi
    if not ok or (kind is int and int(v) != v):
        raise BadRequest(f"'{name}' must be {'an integer' if kind is int else 'a number'} in [{lo}, {hi}]", name)
    return kind(v)


def _flag(body: dict[str, Any], name: str, default: bool = False) -> bool:
    """A JSON boolean: the string "false" is truthy in Python, so it must never be read with bool()."""
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise BadRequest(f"'{name}' must be true or false (a JSON boolean), not {json.dumps(v)[:40]}", name)
    return v


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    """Equal to one of the values that change nothing (booleans only match booleans: False is not 0 here)."""
    return any(value is n if n is None or isinstance(n, bool) else (not isinstance(value, bool) and value == n)
               for n in neutral)


def _reject_unsupported(body: dict[str, Any]) -> None:
    for name, neutral in NEUTRAL_VALUES.items():
        if name in body and not _is_neutral(body[name], neutral):
            raise BadRequest(f"'{name}' is not supported by this server (replies are plain text and end at the "
                             "model's end-of-turn token)", name)


def _stream_options(body: dict[str, Any], stream: bool) -> bool:
    """Whether a stream ends with a usage chunk (`stream_options.include_usage`)."""
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not stream:
        raise BadRequest("'stream_options' is only allowed with stream: true", "stream_options")
    if not isinstance(opts, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    return _flag(opts, "include_usage")


def parse_request(body: Any, max_tokens_limit: int, max_n: int = 8) -> ChatRequest:
    """Validate a chat completion request; raise BadRequest naming the offending field."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    messages = _messages(body)
    _reject_unsupported(body)
    max_tokens = _number(body, "max_tokens", min(256, max_tokens_limit), 1, max_tokens_limit, int)
    if body.get("max_completion_tokens") is not None:
        max_tokens = _number(body, "max_completion_tokens", max_tokens, 1, max_tokens_limit, int)
    temperature = _number(body, "temperature", 1.0, 0, 2)
    n = _number(body, "n", 1, 1, max_n, int)
    params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=_number(body, "top_p", 1.0, 0, 1),
                            n=n if temperature > 0 else 1, seed=_number(body, "seed", 0, 0, 2**31 - 1, int))
    stream = _flag(body, "stream")
    if stream and n != 1:
        raise BadRequest("streaming supports n=1 only", "n")
    given = any(body.get(k) is not None for k in ("max_tokens", "max_completion_tokens"))
    return ChatRequest(messages, params, copies=1 if temperature > 0 else n, stream=stream,
                       include_usage=_stream_options(body, stream), max_tokens_given=given,
                       batchable=temperature == 0 or body.get("seed") is None)


def fit_context(request: ChatRequest, n_prompt: int, context_window: int | None) -> SamplingParams:
    """The engine parameters for a prompt of n_prompt tokens: a 400 naming the window when it cannot fit; an
    unrequested default budget shrinks to the room left, an explicit max_tokens never does."""
    params = request.params
    if not context_window:
        return params
    if n_prompt >= context_window:
        raise BadRequest(f"the prompt is {n_prompt} tokens; this model's context window is {context_window} tokens",
                         "messages", code="context_length_exceeded")
    room = context_window - n_prompt
    if params.max_new_tokens <= room:
        return params
    if request.max_tokens_given:
        raise BadRequest(f"the prompt is {n_prompt} tokens and max_tokens is {params.max_new_tokens}: together more "
                         f"than this model's context window of {context_window} tokens (at most {room} new tokens fit)",
                         "max_tokens", code="context_length_exceeded")
    return replace(params, max_new_tokens=room)


# ---------------------------------------------------------------------------------------------- the work queue

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
        return ("sample", p.max_new_tokens, p.temperature, p.top_p, p.n, p.seed)

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
        replies = self.generator.generate([j.request.messages for j in batch], batch[0].params)
        for job, gens in zip(batch, replies, strict=True):
            job.post("done", [g for g in gens for _ in range(job.request.copies)])

    def _stream(self, job: Job) -> None:
        """Tokens go to the response as they are decoded; a closed connection stops the generation."""
        if job.params.temperature > 0:
            torch.manual_seed(job.params.seed)
        n_tokens, finished = stream_reply(self.generator, job.prompt_ids, job.params,
                                          lambda text: job.post("text", text), should_stop=job.cancelled.is_set)
        job.post("done", (n_tokens, finished))


# ---------------------------------------------------------------------------------------------- the app

def _authorized(request: Request, expected: bytes) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a guessed key was right."""
    given = request.headers.get("authorization", "").encode("latin-1", errors="replace")
    return hmac.compare_digest(given, expected)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read no further than `limit` bytes (a chunked upload has no content-length to check first)."""
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > limit:
        raise BadRequest(f"request body larger than {limit} bytes", status=413)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise BadRequest(f"request body larger than {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(generator, model_name: str, api_key: str | None = None, max_tokens_limit: int = 1024,
               max_request_bytes: int = 1_000_000, max_queue: int = 64, max_batch: int | None = None) -> FastAPI:
    """The server for one generator: `max_queue` requests may wait, `max_batch` (default: the generator's
    batch size) run in one engine call."""
    max_batch = max_batch or getattr(generator, "batch_size", 1)
    check_limits(max_tokens_limit, max_queue, max_batch)
    queue = GenerationQueue(generator, max_queue, max_batch)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        queue.stop()

    app = FastAPI(title="sftlab serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.queue = queue
    expected = f"Bearer {api_key}".encode() if api_key else None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if expected and request.url.path != "/health" and not _authorized(request, expected):
            return _error(401, "invalid or missing API key", kind="authentication_error", code="invalid_api_key")
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), kind="invalid_request_error")

    @app.exception_handler(Exception)
    async def server_error(_request: Request, e: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=e)
        return _internal_error()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "running": queue.running, "queued": queue.queued, "max_queue": queue.max_queue}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "sftlab"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        job, streaming = None, False
        try:
            req = parse_request(parse_body(await _read_body(request, max_request_bytes)), max_tokens_limit)
            job = Job(req, asyncio.get_running_loop())
            queue.submit(job)
            n_prompt = await _next_event(job, "start")
            if req.stream:
                streaming = True  # from here on, the stream's own cleanup cancels the job
                return StreamingResponse(_sse(job, n_prompt, model_name), media_type="text/event-stream")
            return _completion(await _next_event(job, "done"), n_prompt, model_name)
        except BadRequest as e:
            return _error(e.status, str(e), e.param, code=e.code,
                          kind="invalid_request_error" if e.status < 500 else "server_error")
        except QueueFull as e:
            return _error(503, f"the server is busy ({queue.max_queue} requests are waiting); retry after "
                          f"{e.retry_after} s", kind="server_error", code="queue_full",
                          headers={"Retry-After": str(e.retry_after)})
        except Exception:
            log.exception("chat completion failed")
            return _internal_error()
        finally:
            if job is not None and not streaming:
                job.cancelled.set()  # a request that ends early (cancelled, failed) is skipped by the worker

    return app


async def _next_event(job: Job, expected: str) -> Any:
    """The worker's next report for this job: its value, or the error it reported, raised."""
    kind, value = await job.events.get()
    if kind == "error":
        raise value
    if kind != expected:
        raise RuntimeError(f"worker sent {kind!r} where {expected!r} was expected")
    return value


def _completion(gens: list[Generation], n_prompt: int, model_name: str) -> dict[str, Any]:
    completion = sum(g.n_tokens for g in gens)
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": g.text},
                         "finish_reason": "stop" if g.finished else "length"} for i, g in enumerate(gens)],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": completion,
                      "total_tokens": n_prompt + completion}}


async def _sse(job: Job, n_prompt: int, model_name: str) -> AsyncIterator[str]:
    """Server-sent events, one chunk per decoded text piece; an engine failure mid-stream becomes an error
    event (the 200 status is already sent); a closed connection cancels the generation."""
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: dict | None = None) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                "choices": choices}
        if usage is not None:
            data["usage"] = usage
        return "data: " + json.dumps(data) + "\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await job.events.get()
            if kind == "text":
                yield chunk({"content": value})
            elif kind == "error":
                message = str(value) if isinstance(value, BadRequest) else "internal server error (see the server log)"
                yield "data: " + json.dumps({"error": {"message": message, "type": "server_error", "param": None,
                                                       "code": None}}) + "\n\n"
                break
            else:
                n_tokens, finished = value
                yield chunk({}, "stop" if finished else "length")
                if job.request.include_usage:
                    yield chunk(None, usage={"prompt_tokens": n_prompt, "completion_tokens": n_tokens,
                                             "total_tokens": n_prompt + n_tokens})
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()


# ---------------------------------------------------------------------------------------------- options

def check_limits(max_tokens: int, max_queue: int, batch_size: int) -> None:
    """The server's limits, checked before a model is loaded: each must be a positive integer."""
    for option, value in (("--max-tokens", max_tokens), ("--max-queue", max_queue), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{option} {value}: must be an integer of at least 1")

# ---------------------------------------------------------------------------------------------- the socket

def listen_socket(host: str, port: int) -> socket.socket:
    """Bind before the model loads, so a bad port, a taken port or an unknown host fails in a second, clearly."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: a port must be between 1 and 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ConfigError(f"--host {host}: cannot resolve that address ({e.strerror or e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock
