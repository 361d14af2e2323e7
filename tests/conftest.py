"""Shared fixtures. Time-shaped tests run on surge.testing's virtual clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest


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
