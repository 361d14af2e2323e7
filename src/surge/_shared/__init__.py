"""One provider limit shared by many processes: workers lease slices of the budget.

`surge.Limiter(..., shared=..., key=...)` hands its buckets to a `LeaseClient`
(`_client.py`), which leases capacity from a store holding the key's state
(`_ledger.py`): a named Ray actor (`surge.ray`), Redis (`_redis.py`), or, in tests and
for limiters in one process, `MemoryStore`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from surge._shared._client import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_TTL,
    LeaseClient,
    LeasedBucket,
    LeaseStore,
)
from surge._shared._ledger import Message, State, exchange, new_state
from surge._shared._redis import RedisStore, redact

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_TTL",
    "LeaseClient",
    "LeaseStore",
    "LeasedBucket",
    "MemoryStore",
    "RedisStore",
    "connect",
    "redact",
]


class MemoryStore:
    """The ledger in this process: for limiters on several loops or threads of one
    process, and for tests on virtual time (pass `clock`, e.g. the loop's `time`)."""

    def __init__(self, *, clock: Callable[[], float] | None = None, latency: float = 0.0) -> None:
        self._clock = clock
        self._latency = latency
        self._states: dict[str, State] = {}
        self.requests: list[tuple[str, Message]] = []

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    def state(self, key: str) -> State:
        return self._states.setdefault(key, new_state())

    async def exchange(self, key: str, request: Message) -> Message:
        if self._latency:
            await asyncio.sleep(self._latency)
        self.requests.append((key, request))
        return exchange(self.state(key), request, self.now())


def connect(shared: Any, key: Any) -> LeaseClient:
    """The lease client for `Limiter(shared=..., key=...)`: checks both at the door."""
    if not isinstance(key, str) or not key:
        raise ValueError(
            f"shared= needs key=, the name every process uses for this provider key, got "
            f"{key!r}. HINT: surge.Limiter(rpm=..., shared='redis://host:6379/0', "
            "key='openai-prod'); processes that pass the same key share one limit."
        )
    if isinstance(shared, str):
        scheme = shared.split("://", 1)[0].lower() if "://" in shared else shared.lower()
        if scheme in ("redis", "rediss", "unix"):
            return LeaseClient(RedisStore(shared), key)
        if scheme == "ray":
            from surge.ray._actor_limiter import RayStore

            return LeaseClient(RayStore(), key)
        raise ValueError(
            f"shared={redact(shared)!r} is not a store surge knows. HINT: pass "
            "'redis://host:6379/0' (or rediss://, unix://) for Redis, or 'ray' for a "
            "named actor in the Ray cluster this process is connected to."
        )
    if callable(getattr(shared, "exchange", None)):
        return LeaseClient(shared, key)
    raise TypeError(
        f"shared= must be a URL or a store, got {type(shared).__name__}. HINT: "
        "shared='redis://host:6379/0' or shared='ray'."
    )
