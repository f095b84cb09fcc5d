"""What `sftlab serve` answers: OpenAI-shaped error bodies, completions and server-sent event streams."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse

from sftlab.generation.base import Generation
from sftlab.serve.validation import BadRequest
from sftlab.serve.worker import Job


def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """The OpenAI error shape, so every client library surfaces the message instead of a parse failure."""
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def internal_error() -> JSONResponse:
    """A server fault: the details go to the server log, never into the response body."""
    return error_response(500, "internal server error (details are in the server log)", kind="server_error")


async def next_event(job: Job, expected: str) -> Any:
    """The worker's next report for this job: its value, or the error it reported, raised."""
    kind, value = await job.events.get()
    if kind == "error":
        raise value
    if kind != expected:
        raise RuntimeError(f"worker sent {kind!r} where {expected!r} was expected")
    return value


def completion_body(gens: list[Generation], n_prompt: int, model_name: str) -> dict[str, Any]:
    """A finished (non-streamed) reply in OpenAI's `chat.completion` shape, with token usage."""
    completion = sum(g.n_tokens for g in gens)
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": g.text},
                         "finish_reason": "stop" if g.finished else "length"} for i, g in enumerate(gens)],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": completion,
                      "total_tokens": n_prompt + completion}}


async def sse_events(job: Job, n_prompt: int, model_name: str) -> AsyncIterator[str]:
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
