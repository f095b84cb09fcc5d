"""OpenAI-compatible HTTP engine: vLLM, llama.cpp server, Ollama, `sftlab serve`, or any hosted API.

Bounded concurrency, a per-request timeout, and retries with exponential backoff on 429, 5xx, timeouts
and connection errors. The API key comes from an environment variable and is never logged.
"""

from __future__ import annotations

import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from sftlab.generation.base import Generation, GenerationError, Messages, SamplingParams

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIHTTPGenerator:
    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY", concurrency: int = 4,
                 timeout: float = 120.0, max_retries: int = 4, backoff: float = 0.5) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_id = model
        self.concurrency, self.max_retries, self.backoff = concurrency, max_retries, backoff
        key = os.environ.get(api_key_env) if api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)
        self.context_window = None

    def close(self) -> None:
        self.client.close()

    def generate(self, prompts: list[Messages], params: SamplingParams | None = None) -> list[list[Generation]]:
        params = params or SamplingParams()
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda p: self._one(p, params), prompts))

    def _one(self, messages: Messages, params: SamplingParams) -> list[Generation]:
        body: dict[str, Any] = {"model": self.model_id, "messages": messages, "n": params.n,
                                "max_tokens": params.max_new_tokens, "temperature": params.temperature,
                                "top_p": params.top_p, "seed": params.seed}
        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.max_retries + 1):
            try:
                r = self.client.post(url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                err = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    return self._parse(r, params.n)
                if r.status_code not in RETRY_STATUS:
                    raise GenerationError(f"{url} answered {r.status_code}: {r.text[:300]}")
                err = f"HTTP {r.status_code}"
            if attempt < self.max_retries:
                delay = self.backoff * 2**attempt * (1 + random.random() / 2)
                log.warning("%s failed (%s); retry %d/%d in %.1fs", url, err, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        raise GenerationError(f"{url} failed after {self.max_retries + 1} attempts: {err}")

    @staticmethod
    def _parse(r: httpx.Response, n: int) -> list[Generation]:
        try:
            data = r.json()
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            gens = [Generation(text=(c["message"].get("content") or "").strip(),
                               n_tokens=int(data.get("usage", {}).get("completion_tokens", 0)) // max(1, len(choices)),
                               finished=c.get("finish_reason") == "stop") for c in choices]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise GenerationError(f"malformed chat completion response ({type(e).__name__}: {e}): "
                                  f"{r.text[:200]!r}") from None
        if len(gens) != n:
            raise GenerationError(f"asked for {n} choices, got {len(gens)}")
        return gens
