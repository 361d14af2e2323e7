"""Shared fixtures. Time-shaped tests run on surge.testing's virtual clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import surge


class Spy:
    """Counts calls in flight and records what a fake call saw."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.starts: list[tuple[float, Any]] = []
        self.ends: list[tuple[float, Any]] = []

    def wrap(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def call(item: Any) -> Any:
            loop = asyncio.get_running_loop()
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.starts.append((loop.time(), item))
            try:
                return await fn(item)
            finally:
                self.in_flight -= 1
                self.ends.append((loop.time(), item))

        return call


@pytest.fixture
def spy() -> Spy:
    return Spy()


class Fleet:
    """Workers on one shared budget, as the shared-limiter tests run them.

    Each worker is a `surge.Limiter(shared=..., key=...)` running `surge.gather` over
    calls that note when they were admitted, on the running loop's clock (virtual under
    surge.testing.run, monotonic under asyncio.run).
    """

    def __init__(self) -> None:
        self.admitted: list[float] = []
        self.limiters: list[surge.Limiter] = []

    async def worker(
        self,
        shared: Any,
        items: int,
        *,
        rpm: float,
        key: str = "prod",
        latency: float = 0.3,
        **kw: Any,
    ) -> surge.Limiter:
        limiter = surge.Limiter(rpm=rpm, shared=shared, key=key, **kw)
        self.limiters.append(limiter)
        loop = asyncio.get_running_loop()

        async def call(i: int) -> int:
            self.admitted.append(loop.time())
            await asyncio.sleep(latency)
            return i

        results = await surge.gather(call, range(items), limiter=limiter)
        assert all(r.ok for r in results)
        return limiter

    async def share(self, shared: Any, workers: int, items: int, **kw: Any) -> float:
        """Run `workers` workers of `items` calls at once; seconds from start to last admission."""
        start = asyncio.get_running_loop().time()
        await asyncio.gather(*(self.worker(shared, items, **kw) for _ in range(workers)))
        return max(self.admitted) - start

    def max_in_window(self, window: float) -> int:
        """The most calls admitted within any `window` seconds."""
        times = sorted(self.admitted)
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window - 1e-9:
                start += 1
            best = max(best, end - start + 1)
        return best


@pytest.fixture
def fleet() -> Fleet:
    return Fleet()
