"""Test helpers: an event loop on virtual time, so time-shaped tests run in milliseconds.

Everything surge does with time goes through the running loop's clock (`loop.time()`,
`asyncio.sleep`, `loop.call_at`, `asyncio.timeout`). `VirtualTimeLoop` keeps that clock
virtual: whenever no callback is ready and no I/O is pending, it jumps straight to the
next timer instead of waiting for it (the idea behind trio's autojumping MockClock).

    def test_backoff():
        elapsed = surge.testing.run(main())   # a 60 s scenario, in milliseconds

Real I/O still works (sockets are polled without blocking before each jump), but work
done in threads is invisible to it: a loop that only waits on a thread jumps ahead.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["VirtualTimeLoop", "run"]


class _JumpingSelector(selectors.DefaultSelector):
    """A selector whose timed waits advance the loop's virtual clock instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout is None or timeout <= 0:
            # No timer pending (timeout None) means only I/O can wake the loop: wait for it.
            return events if events or timeout is not None else super().select(None)
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose `time()` only moves when every task is waiting on a timer."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = start

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._virtual_now += seconds


def run(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """Run a coroutine to completion on a fresh VirtualTimeLoop, like asyncio.run."""
    loop = VirtualTimeLoop(start)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
