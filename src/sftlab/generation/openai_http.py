"""OpenAI-compatible HTTP engine: vLLM, llama.cpp server, Ollama, `sftlab serve`, or any hosted API.

One endpoint or several serving the same model (least-loaded dispatch, a failed request moves to another
endpoint). Bounded concurrency, a per-request timeout, and retries with exponential backoff on 429, 5xx, timeouts
and connection errors once every endpoint failed. The API key comes from an environment variable and is never logged.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from sftlab.data.schema import Conversation
from sftlab.generation.base import Generation, GenerationError, Messages, SamplingParams, as_messages
from sftlab.generation.endpoints import Endpoint, EndpointPool, endpoint_urls

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
FINISHED = {"stop", "tool_calls", "function_call"}  # finish reasons of a reply that ended its turn


class OpenAIHTTPGenerator:
    """One endpoint or several serving the same model (`base_url` a list): each request goes to the least-loaded
    endpoint, and a failed request moves to another one before any backoff (see `sftlab.generation.endpoints`).
    `concurrency` is per endpoint."""

    def __init__(self, base_url: str | list[str], model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 concurrency: int = 4, timeout: float = 120.0, max_retries: int = 4, backoff: float = 0.5) -> None:
        self.pool = EndpointPool(endpoint_urls(base_url), rest=max(backoff, 0.01))
        self.base_url = self.pool.endpoints[0].url
        self.model_id = model
        self.concurrency, self.max_retries, self.backoff = concurrency, max_retries, backoff
        key = os.environ.get(api_key_env) if api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)
        self.context_window = None

    def close(self) -> None:
        self.client.close()

    def generate(self, prompts: list[Messages | Conversation], params: SamplingParams | None = None
                 ) -> list[list[Generation]]:
        params = params or SamplingParams()
        with ThreadPoolExecutor(max_workers=self.concurrency * len(self.pool.endpoints)) as pool:
            return list(pool.map(lambda p: self._one(p, params), prompts))

    def _one(self, prompt: Messages | Conversation, params: SamplingParams) -> list[Generation]:
        """A Conversation's tools go in the request's `tools`, where the server's template shows them."""
        body: dict[str, Any] = {"model": self.model_id, "messages": as_messages(prompt), "n": params.n,
                                "max_tokens": params.max_new_tokens, "temperature": params.temperature,
                                "top_p": params.top_p, "seed": params.seed}
        if isinstance(prompt, Conversation) and prompt.tools:
            body["tools"] = prompt.tools
        errors: dict[str, str] = {}
        for attempt in range(self.max_retries + 1):
            tried: set[str] = set()
            while (endpoint := self.pool.acquire(tried)) is not None:  # every endpoint once, least loaded first
                tried.add(endpoint.url)
                gens = self._post(endpoint, body, params.n, errors)
                if gens is not None:
                    return gens
            if attempt < self.max_retries:
                delay = self.backoff * 2**attempt * (1 + random.random() / 2)
                log.warning("%s failed (%s); retry %d/%d in %.1fs", " and ".join(errors), "; ".join(errors.values()),
                            attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        raise self._all_failed(errors)

    def _post(self, endpoint: Endpoint, body: dict[str, Any], n: int,
              errors: dict[str, str]) -> list[Generation] | None:
        """One try on one endpoint: the replies, or None after recording a failure another endpoint may not have
        (connection, timeout, 429/5xx); a reply that is the request's fault (4xx, garbage) raises."""
        try:
            r = self.client.post(f"{endpoint.url}/chat/completions", json=body)
        except httpx.RequestError as e:  # refused, reset, timed out, unreadable: the endpoint's fault
            return self._failed(endpoint, f"{type(e).__name__}: {e}", errors)
        if r.status_code in RETRY_STATUS:
            return self._failed(endpoint, f"HTTP {r.status_code}", errors, rest=_retry_after(r))
        self.pool.release(endpoint)  # it answered: whatever is wrong now is this request's, not the endpoint's
        if r.status_code != 200:
            raise GenerationError(f"{endpoint.name}/chat/completions answered {r.status_code}: {r.text[:300]}")
        return self._parse(r, n)

    def _failed(self, endpoint: Endpoint, error: str, errors: dict[str, str], rest: float | None = None) -> None:
        """Record an endpoint's failure; with others to go to, say that its requests move there."""
        errors[endpoint.name] = error
        rest = self.pool.release(endpoint, error, rest)
        if len(self.pool.endpoints) > 1:
            log.warning("endpoint %s failed (%s): resting %.1fs, its requests go to the other endpoints",
                        endpoint.name, error, rest)

    def _all_failed(self, errors: dict[str, str]) -> GenerationError:
        """Every endpoint failed on every try: one sentence naming each and its last error."""
        tries = self.max_retries + 1
        if len(self.pool.endpoints) == 1:
            url, err = next(iter(errors.items()))
            return GenerationError(f"{url}/chat/completions failed after {tries} attempts: {err}")
        return GenerationError(f"all {len(self.pool.endpoints)} endpoints failed, {tries} attempts each: "
                               + "; ".join(f"{u}: {e}" for u, e in errors.items()))

    @staticmethod
    def _parse(r: httpx.Response, n: int) -> list[Generation]:
        """Each choice's text and, for a prompt that offered tools, the calls the server parsed out of the reply
        (`message.tool_calls`, content then null or empty): a call ends the turn as "stop" does."""
        try:
            data = r.json()
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            gens = []
            for c in choices:
                msg = c["message"]
                calls, error = _tool_calls(msg.get("tool_calls") or ([{"function": msg["function_call"]}]
                                                                     if msg.get("function_call") else None))
                if error:
                    log.warning("a reply's tool call is not usable: %s", error)
                gens.append(Generation(
                    text=(msg.get("content") or "").strip(),
                    n_tokens=int(data.get("usage", {}).get("completion_tokens", 0)) // max(1, len(choices)),
                    finished=c.get("finish_reason") in FINISHED, tool_calls=calls, tool_call_error=error))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise GenerationError(f"malformed chat completion response ({type(e).__name__}: {e}): "
                                  f"{r.text[:200]!r}") from None
        if len(gens) != n:
            raise GenerationError(f"asked for {n} choices, got {len(gens)}")
        return gens


def _tool_calls(raw: Any) -> tuple[list[dict[str, Any]] | None, str | None]:
    """OpenAI's `tool_calls` ([{"type": "function", "function": {"name", "arguments": "<JSON text>"}}]) as
    Turn.tool_calls holds them ([{"name", "arguments": dict}]), or why they cannot be (None and the reason): a
    call whose arguments are not a JSON object would fail validation or train on a broken call."""
    if not raw:
        return None, None
    if not isinstance(raw, list):
        return None, f"tool_calls is a {type(raw).__name__}, not a list"
    calls = []
    for i, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            return None, f"tool call {i} has no function name: {json.dumps(call)[:200]}"
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else None
            except json.JSONDecodeError as e:
                return None, f"the arguments of tool call {i} ({name}) are not valid JSON ({e}): {args[:200]!r}"
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return None, f"the arguments of tool call {i} ({name}) are a {type(args).__name__}, not a JSON object"
        calls.append({"name": name, "arguments": args})
    return calls, None


def _retry_after(r: httpx.Response) -> float | None:
    """The server's Retry-After in seconds (e.g. `sftlab serve`'s 503 when its queue is full), if it gave one."""
    try:
        return max(0.0, float(r.headers["retry-after"]))
    except (KeyError, ValueError):
        return None
