"""Live progress for a job: a bar on a terminal, a log line every few seconds elsewhere.

It reads the same numbers the engine and limiter expose through `statistics()`, so what
the bar says and what the summary says cannot disagree.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@dataclass
class Snapshot:
    done: int
    total: int
    failed: int
    in_flight: int
    retries: int
    rate_limited: int
    tokens: int
    cost: float
    elapsed: float

    def line(self) -> str:
        rate = self.done / self.elapsed if self.elapsed > 0 else 0.0
        tokens_rate = self.tokens / self.elapsed if self.elapsed > 0 else 0.0
        remaining = self.total - self.done - self.failed
        eta = remaining / rate if rate > 0 else float("inf")
        eta_text = f"{eta:,.0f}s" if eta != float("inf") else "?"
        return (
            f"{self.done + self.failed:,}/{self.total:,} finished | {rate:,.1f} req/s | "
            f"{tokens_rate:,.0f} tok/s | in flight {self.in_flight} | retries {self.retries} | "
            f"429s {self.rate_limited} | failed {self.failed} | ETA {eta_text} | ${self.cost:,.4f}"
        )


class ProgressDisplay:
    """`update(snapshot)` as often as you like; it redraws or logs at its own pace."""

    def __init__(
        self, *, enabled: bool = True, stream: TextIO | None = None, interval: float = 5.0
    ) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._tty = enabled and self._stream.isatty()
        self._interval = interval
        self._last_log = 0.0
        self._progress: Progress | None = None
        self._task: Any = None
        self.console = Console(file=self._stream)

    def __enter__(self) -> ProgressDisplay:
        if self._tty:
            self._progress = Progress(
                TextColumn("[bold]surge run"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("run", total=None, stats="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None

    def update(self, snapshot: Snapshot, *, force: bool = False) -> None:
        if not self._enabled:
            return
        if self._progress is not None:
            stats = snapshot.line().split(" | ", 1)[1]
            self._progress.update(
                self._task,
                completed=snapshot.done + snapshot.failed,
                total=snapshot.total,
                stats=stats,
            )
            return
        now = time.monotonic()
        if force or now - self._last_log >= self._interval:
            self._last_log = now
            print(f"[surge] {snapshot.line()}", file=self._stream, flush=True)

    def note(self, message: str) -> None:
        if self._enabled:
            self.console.print(message)
