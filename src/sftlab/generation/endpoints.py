"""Several OpenAI-compatible endpoints serving one model: least-loaded dispatch, and a failed endpoint rests.

Each request goes to the endpoint with the fewest requests in flight among those not resting (ties: the one
listed first). An endpoint that fails (connection refused, timeout, 429/5xx) rests for a while that doubles with
each consecutive failure, up to `max_rest`; a success ends it. The request itself moves on to another endpoint,
so one endpoint going down costs the run nothing but the requests it had in flight, which are retried elsewhere.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from dataclasses import dataclass

from sftlab.errors import ConfigError


def shown_url(url: str) -> str:
    """A URL as logs, errors and summaries show it: a user:password@ in it is replaced by ***@ (secrets are never
    logged)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


@dataclass
class Endpoint:
    url: str
    in_flight: int = 0
    served: int = 0
    failed: int = 0
    consecutive_failures: int = 0
    rest_until: float = 0.0
    last_error: str = ""

    @property
    def name(self) -> str:
        return shown_url(self.url)


def endpoint_urls(base_url: str | list[str] | tuple[str, ...]) -> list[str]:
    """One URL or several, normalised (no trailing slash, no repeats); an empty list is a config error."""
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    out = list(dict.fromkeys(u.strip().rstrip("/") for u in urls if u and u.strip()))
    if not out:
        raise ConfigError("no endpoint URL given: pass --base-url URL (repeat it for several endpoints)")
    return out


class EndpointPool:
    """Thread-safe choice of the endpoint for the next request, and each endpoint's record."""

    def __init__(self, urls: list[str], rest: float = 1.0, max_rest: float = 30.0) -> None:
        self.endpoints = [Endpoint(u) for u in urls]
        self.rest, self.max_rest = rest, max_rest
        self._lock = threading.Lock()

    def acquire(self, tried: set[str]) -> Endpoint | None:
        """The least-loaded endpoint not yet tried for this request: a resting one only when no other is left
        (the one whose rest ends first), None when every endpoint was tried."""
        with self._lock:
            left = [e for e in self.endpoints if e.url not in tried]
            if not left:
                return None
            now = time.monotonic()
            awake = [e for e in left if e.rest_until <= now]
            best = min(awake, key=lambda e: e.in_flight) if awake else min(left, key=lambda e: e.rest_until)
            best.in_flight += 1
            return best

    def release(self, endpoint: Endpoint, error: str | None = None, rest: float | None = None) -> float:
        """Record how a request ended; a failure puts the endpoint to rest (`rest` seconds if the server said):
        the seconds it rests."""
        with self._lock:
            endpoint.in_flight -= 1
            if error is None:
                endpoint.served += 1
                endpoint.consecutive_failures, endpoint.rest_until = 0, 0.0
                return 0.0
            endpoint.failed += 1
            endpoint.consecutive_failures += 1
            endpoint.last_error = error
            doubling = self.rest * 2 ** (endpoint.consecutive_failures - 1)
            wait = min(self.max_rest, rest if rest is not None else doubling)
            endpoint.rest_until = time.monotonic() + wait
            return wait

    def report(self) -> dict[str, dict[str, int]]:
        """Requests served and failed per endpoint (for the run summary and the logs)."""
        with self._lock:
            return {e.name: {"served": e.served, "failed": e.failed} for e in self.endpoints}
