"""Wire an HTTP client to surge: every response's headers reach the run's limiter.

An SDK call returns a parsed object (a `ChatCompletion`) with no headers on it, so the
limiter never sees the provider's `x-ratelimit-*` count on a success, and the SDK's own
retries (openai and anthropic retry twice by default) go out underneath surge's, past
its limiter. `wire(client)` puts a thin transport under the client's HTTP connection
pool: on every request it looks up, through a context variable the engine sets for each
attempt, which run's limiter the request belongs to, holds the request while that
limiter learns its first rate, and hands it every answer's headers. Outside a surge
run the transport passes requests straight through.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from surge._feedback import LimitHint, RateLimitHints, parse_rate_limit_headers
from surge._limits import Limiter, Permit

C = TypeVar("C")
logger = logging.getLogger("surge")

# The header the openai and anthropic SDKs (Stainless-generated) send on every request:
# how many times the SDK itself has retried this call so far.
_SDK_RETRY_HEADER = "x-stainless-retry-count"


@dataclass(slots=True)
class AttemptScope:
    """What a wired client needs to know about the attempt it runs in (engine-set)."""

    limiter: Limiter
    permit: Permit
    on_sdk_retry: Any
    """Called with the retry count when the SDK retried underneath surge."""
    deadline: Any = None
    """The attempt's `timeout=` (an `asyncio.Timeout`, Python 3.11+), extended by whatever
    the request waited for the limiter."""


current_attempt: ContextVar[AttemptScope | None] = ContextVar("surge_attempt", default=None)


def sdk_retry_count(request: Any) -> int:
    """How many times an SDK retried a request by itself (0 when it says nothing)."""
    headers = getattr(request, "headers", None)
    value = headers.get(_SDK_RETRY_HEADER) if headers is not None else None
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


@dataclass(slots=True)
class _Endpoint:
    """What one wired HTTP client has learned, carried from one run to the next: the
    provider's last count per dimension and when it was read, so that a new run's
    limiter starts from the server's state (aged by the time since) instead of probing
    again or bursting into a bucket the last run emptied."""

    answered: bool = False
    counts: dict[str, tuple[LimitHint, float]] = field(default_factory=dict)

    def seed(self, limiter: Limiter) -> None:
        if not self.answered or not limiter.learning:
            return
        now = time.monotonic()
        dimensions = {}
        for name, (hint, seen) in self.counts.items():
            burst, rate = hint.server_burst(), (hint.limit or 0.0) / 60.0
            if burst is None or hint.remaining is None or hint.reset is None:
                dimensions[name] = LimitHint(limit=hint.limit)
                continue
            elapsed = now - seen
            remaining = min(burst, hint.remaining + elapsed * rate)
            dimensions[name] = LimitHint(
                limit=hint.limit, remaining=remaining, reset=max(0.0, hint.reset - elapsed)
            )
        limiter.request_answered(RateLimitHints(dimensions=dimensions))

    def learn(self, hints: RateLimitHints) -> None:
        self.answered = True
        now = time.monotonic()
        for name, hint in hints.dimensions.items():
            if hint.limit is not None:
                self.counts[name] = (hint, now)


class _LimiterTransport:
    """An httpx (or httpx2, which the openai and anthropic SDKs use) async transport that
    feeds the current run's limiter; duck-typed, so one class serves both libraries."""

    def __init__(self, inner: Any, endpoint: _Endpoint) -> None:
        self._inner = inner
        self._endpoint = endpoint

    async def handle_async_request(self, request: Any) -> Any:
        scope = current_attempt.get()
        if scope is None:  # not inside a surge run
            return await self._inner.handle_async_request(request)
        retries = sdk_retry_count(request)
        if retries:
            scope.on_sdk_retry(retries)
        limiter = scope.limiter
        self._endpoint.seed(limiter)
        deadline = scope.deadline
        when = deadline.when() if deadline is not None else None
        if when is None:
            await limiter.admit_request(scope.permit)
        else:
            # Time spent waiting for the limiter is not the attempt's to lose: hold the
            # attempt's timeout while waiting, then move it on by the time waited.
            deadline.reschedule(None)
            waited = await limiter.admit_request(scope.permit)
            deadline.reschedule(when + waited)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            limiter.request_failed()
            raise
        hints = parse_rate_limit_headers(response.headers)
        self._endpoint.learn(hints)
        limiter.request_answered(hints, scope.permit)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _LimiterTransport:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._inner.__aexit__(*exc_info)


def wire(client: C) -> C:
    """Connect an async SDK client to surge; use what it returns for every call.

    Works with `openai.AsyncOpenAI`, `anthropic.AsyncAnthropic` (anything built on an
    httpx-style `AsyncClient`), and a plain `httpx.AsyncClient`::

        client = surge.wire(openai.AsyncOpenAI())

        async def summarize(text):
            return await client.chat.completions.create(model=..., messages=[...])

        results = await surge.gather(summarize, texts, concurrency=50)

    What it does:
    - every HTTP response the client receives inside a surge run, successes included,
      hands its rate-limit headers to that run's limiter (`gather`'s own, or the shared
      `limiter=`), so a limiter given no `rpm=` adopts the provider's published limits;
    - a limiter that knows no rate yet sends the first request alone and holds the
      others until its headers arrive (once per client: later runs start from the
      limits it learned); on Python 3.11+ time spent waiting for the limiter does not
      count against the attempt's `timeout=`;
    - the SDK's own retries are turned off (`max_retries=0`): surge retries, with
      backoff, Retry-After and the limiter, and an SDK retrying underneath would
      fight it. (Where surge sees an SDK retry anyway, it warns once per run.)

    The client is changed in place (its HTTP transport is wrapped) and the SDK's
    `with_options(max_retries=0)` copy is returned; it shares the connection pool.
    Outside a surge run the wired client behaves exactly as before.
    """
    http = getattr(client, "_client", None)
    if http is None and hasattr(client, "_transport"):
        http = client  # a plain httpx.AsyncClient
    if http is None or not hasattr(http, "_transport") or not hasattr(http, "_mounts"):
        raise TypeError(
            f"surge.wire() takes an async SDK client or an httpx.AsyncClient, got "
            f"{type(client).__name__}. HINT: surge.wire(openai.AsyncOpenAI()) or "
            "surge.wire(anthropic.AsyncAnthropic())."
        )
    if not hasattr(http._transport, "handle_async_request"):
        raise TypeError(
            f"surge.wire() needs the async client; {type(client).__name__} is synchronous. "
            "HINT: use openai.AsyncOpenAI() / anthropic.AsyncAnthropic() (surge.map runs "
            "async calls from plain scripts too)."
        )
    if not isinstance(http._transport, _LimiterTransport):
        endpoint = _Endpoint()
        http._transport = _LimiterTransport(http._transport, endpoint)
        http._mounts = {
            pattern: (
                transport
                if transport is None or isinstance(transport, _LimiterTransport)
                else _LimiterTransport(transport, endpoint)
            )
            for pattern, transport in http._mounts.items()
        }
    if http is client:
        return client
    with_options = getattr(client, "with_options", None)
    if with_options is None:
        return client
    wired: C = with_options(max_retries=0)
    return wired
