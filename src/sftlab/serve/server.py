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
import hmac
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from sftlab.errors import ConfigError
from sftlab.serve.responses import completion_body, error_response, internal_error, next_event, sse_events
from sftlab.serve.validation import BadRequest, parse_body, parse_request
from sftlab.serve.worker import GenerationQueue, Job, QueueFull

__all__ = ["check_limits", "create_app", "listen_socket"]

log = logging.getLogger(__name__)
DISCONNECT_POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there



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
    _add_guards(app, f"Bearer {api_key}".encode() if api_key else None)
    _add_routes(app, queue, model_name, max_tokens_limit, max_request_bytes)
    return app


class _KeyGuard:
    """The API key check, as plain ASGI: Starlette's @app.middleware("http") hides the client's disconnect from
    the endpoint, which then generated whole replies for clients long gone."""

    def __init__(self, app: ASGIApp, expected: bytes) -> None:
        self.app, self.expected = app, expected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health" and not _authorized(Request(scope), self.expected):
            response = error_response(401, "invalid or missing API key", kind="authentication_error",
                                      code="invalid_api_key")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _add_guards(app: FastAPI, expected: bytes | None) -> None:
    """The API key check (all but /health) and OpenAI-shaped bodies for HTTP errors and unexpected faults."""

    if expected:
        app.add_middleware(_KeyGuard, expected=expected)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), kind="invalid_request_error")

    @app.exception_handler(Exception)
    async def server_error(_request: Request, e: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=e)
        return internal_error()


def _add_routes(app: FastAPI, queue: GenerationQueue, model_name: str, max_tokens_limit: int,
                max_request_bytes: int) -> None:
    """/health, /v1/models and /v1/chat/completions."""

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "running": queue.running, "queued": queue.queued, "max_queue": queue.max_queue}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "sftlab"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _chat_completion(request, queue, model_name, max_tokens_limit, max_request_bytes)


async def _chat_completion(request: Request, queue: GenerationQueue, model_name: str, max_tokens_limit: int,
                           max_request_bytes: int):
    """One request: validated, queued, answered whole or streamed; every failure an OpenAI error body."""
    job, streaming = None, False
    try:
        req = parse_request(parse_body(await _read_body(request, max_request_bytes)), max_tokens_limit)
        job = Job(req, asyncio.get_running_loop())
        queue.submit(job)
        n_prompt = await next_event(job, "start")
        if req.stream:
            streaming = True  # from here on, the stream's own cleanup cancels the job
            return StreamingResponse(sse_events(job, n_prompt, model_name), media_type="text/event-stream")
        done = await _done_unless_gone(request, job)
        return Response(status_code=499) if done is None else completion_body(done, n_prompt, model_name)
    except BadRequest as e:
        return error_response(e.status, str(e), e.param, code=e.code,
                              kind="invalid_request_error" if e.status < 500 else "server_error")
    except QueueFull as e:
        return error_response(503, f"the server is busy ({queue.max_queue} requests are waiting); retry after "
                              f"{e.retry_after} s", kind="server_error", code="queue_full",
                              headers={"Retry-After": str(e.retry_after)})
    except Exception:
        log.exception("chat completion failed")
        return internal_error()
    finally:
        if job is not None and not streaming:
            job.cancelled.set()  # a request that ends early (cancelled, failed) is skipped by the worker


async def _done_unless_gone(request: Request, job: Job) -> Any:
    """The finished generation, or None once the client has closed the connection: the job is cancelled, so the
    worker stops generating a reply nobody will read (a client's timeout and retry would else queue it twice)."""
    done = asyncio.ensure_future(next_event(job, "done"))
    while not done.done():
        await asyncio.wait({done}, timeout=DISCONNECT_POLL_S)
        if not done.done() and await request.is_disconnected():
            done.cancel()
            job.cancelled.set()
            return None
    return done.result()


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
