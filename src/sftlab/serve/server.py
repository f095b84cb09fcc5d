"""`sftlab serve`: OpenAI-compatible `/v1/chat/completions` (incl. streaming) and `/v1/models`.

Binds 127.0.0.1 unless told otherwise; optional API key (from an environment variable); request-size and
max_tokens limits; bad requests get a 4xx with an OpenAI-style error body naming the field.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from sftlab.generation.base import SamplingParams
from sftlab.generation.transformers_backend import TransformersGenerator


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param,
                                                               "code": None}})


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def parse_request(body: Any, max_tokens_limit: int,
                  max_n: int = 8) -> tuple[list[dict[str, Any]], SamplingParams, bool]:
    """Validate a chat completion request; raise BadRequest naming the offending field."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise BadRequest("each message needs a role of system, user, assistant or tool", f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise BadRequest("content must be a string", f"messages[{i}].content")
        clean.append({"role": m["role"], "content": content})

    def number(name: str, default: float, lo: float, hi: float, kind: type = float) -> Any:
        v = body.get(name, default)
        if v is None:
            v = default
        if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and int(v) != v) or not lo <= v <= hi:
            raise BadRequest(f"'{name}' must be a {'integer' if kind is int else 'number'} in [{lo}, {hi}]", name)
        return kind(v)

    max_tokens = number("max_tokens", min(256, max_tokens_limit), 1, max_tokens_limit, int)
    if "max_completion_tokens" in body:
        max_tokens = number("max_completion_tokens", max_tokens, 1, max_tokens_limit, int)
    params = SamplingParams(max_new_tokens=max_tokens, temperature=number("temperature", 1.0, 0, 2),
                            top_p=number("top_p", 1.0, 0, 1), n=number("n", 1, 1, max_n, int),
                            seed=number("seed", 0, 0, 2**31 - 1, int))
    stream = bool(body.get("stream", False))
    if stream and params.n != 1:
        raise BadRequest("streaming supports n=1 only", "n")
    return clean, params, stream


def create_app(generator: TransformersGenerator, model_name: str, api_key: str | None = None,
               max_tokens_limit: int = 1024, max_request_bytes: int = 1_000_000) -> FastAPI:
    app = FastAPI(title="sftlab serve", docs_url=None, redoc_url=None)
    lock = threading.Lock()  # one model, one generation at a time

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            return _error(401, "invalid or missing API key", kind="authentication_error")
        size = request.headers.get("content-length")
        if size and int(size) > max_request_bytes:
            return _error(413, f"request body larger than {max_request_bytes} bytes")
        return await call_next(request)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "sftlab"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raw = await request.body()
        if len(raw) > max_request_bytes:
            return _error(413, f"request body larger than {max_request_bytes} bytes")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON")
        try:
            messages, params, stream = parse_request(body, max_tokens_limit)
            if messages[-1]["role"] == "assistant":
                raise BadRequest("the last message must not be from the assistant", "messages")
        except BadRequest as e:
            return _error(400, str(e), e.param)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if stream:
            return StreamingResponse(_stream(generator, lock, messages, params, cid, created, model_name),
                                     media_type="text/event-stream")
        with lock:
            gens = generator.generate([messages], params)[0]
        n_prompt = len(generator.encode(messages))
        return {"id": cid, "object": "chat.completion", "created": created, "model": model_name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": g.text},
                             "finish_reason": "stop" if g.finished else "length"} for i, g in enumerate(gens)],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": sum(g.n_tokens for g in gens),
                          "total_tokens": n_prompt + sum(g.n_tokens for g in gens)}}

    return app


def _stream(generator: TransformersGenerator, lock: threading.Lock, messages, params: SamplingParams, cid: str,
            created: int, model_name: str):
    """Server-sent events, one chunk per decoded text piece, as the model produces it."""
    import torch
    from transformers import TextIteratorStreamer

    tok, model = generator.tokenizer, generator.model
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    ids = torch.tensor([generator.encode(messages)], device=next(model.parameters()).device)
    sample = params.temperature > 0
    result: dict[str, Any] = {}

    def run() -> None:
        with lock:
            if sample:
                torch.manual_seed(params.seed)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=params.max_new_tokens,
                                 do_sample=sample, temperature=params.temperature if sample else None,
                                 top_p=params.top_p if sample else None, top_k=None, streamer=streamer,
                                 eos_token_id=generator.stop_ids, pad_token_id=generator.pad_id)
            result["finished"] = any(int(t) in generator.stop_ids for t in out[0, ids.shape[1]:])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                      "model": model_name, "choices": [{"index": 0, "delta": delta,
                                                                        "finish_reason": finish}]}) + "\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in streamer:
        if piece:
            yield chunk({"content": piece})
    thread.join()
    yield chunk({}, "stop" if result.get("finished") else "length")
    yield "data: [DONE]\n\n"
