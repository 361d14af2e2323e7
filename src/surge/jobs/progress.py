"""Live progress for a job: a bar on a terminal, a log line every few seconds elsewhere.

It reads the same numbers the engine and limiter expose through `statistics()`, so what
the bar says and what the summary says cannot disagree.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Column


@dataclass
class Snapshot:
    done: int
    total: int
    failed: int
    in_flight: int
    retries: int
    rate_limited: int
    tokens: int
    cost: float | None
    elapsed: float

    @property
    def rate(self) -> float:
        """Items finished per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until every item is finished at the rate so far; None before any."""
        remaining = self.total - self.done - self.failed
        if remaining <= 0:
            return 0.0
        return remaining / self.rate if self.rate > 0 else None

    def line(self) -> str:
        tokens_rate = self.tokens / self.elapsed if self.elapsed > 0 else 0.0
        eta_text = "?" if self.eta is None else f"{self.eta:,.0f}s"
        return (
            f"{self.done + self.failed:,}/{self.total:,} finished | {self.rate:,.1f} req/s | "
            f"{tokens_rate:,.0f} tok/s | in flight {self.in_flight} | retries {self.retries} | "
            f"429s {self.rate_limited} | failed {self.failed} | ETA {eta_text} | {_usd(self.cost)}"
        )


def _usd(cost: float | None) -> str:
    if cost is None:
        return "$?"
    return f"${cost:,.4f}" if cost < 1 else f"${cost:,.2f}"


def _duration(seconds: float | None) -> str:
    """42s, 4m05s, 27h46m: short enough for an 80-column progress line."""
    if seconds is None:
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours:,}h{minutes:02d}m"


# Columns the bar keeps on a narrow terminal before the numbers give way.
_MIN_BAR = 10
_FIELDS = ("count", "eta", "cost", "rate", "trouble")


def _per_second(rate: float) -> str:
    return f"{rate:,.1f} req/s" if rate < 100 else f"{rate:,.0f} req/s"


class ProgressDisplay:
    """`update(snapshot)` as often as you like; it redraws or logs at its own pace.

    On a terminal: a bar and short columns (finished/total, ETA, cost, req/s, 429s and
    failures), each its own rich column so that an 80-column terminal shrinks the bar,
    never the numbers. Elsewhere: a log line every `interval` seconds. Pass `console`
    to draw on a console of your own (tests record one 80 columns wide).
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = 5.0,
        console: Console | None = None,
    ) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self.console = console or Console(file=self._stream)
        self._tty = enabled and (
            self.console.is_terminal if console is not None else self._stream.isatty()
        )
        self._interval = interval
        self._last_log = -math.inf  # the first update is logged at once
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> ProgressDisplay:
        if self._tty:

            def column(field: str, style: str) -> TextColumn:
                # no_wrap: a number is never folded onto a second line or cut short.
                return TextColumn(f"{{task.fields[{field}]}}", style=style,
                                  table_column=Column(no_wrap=True))  # fmt: skip

            self._progress = Progress(
                BarColumn(bar_width=None),
                column("count", "progress.download"),
                column("eta", "progress.remaining"),
                column("cost", "bold"),
                column("rate", "progress.data.speed"),
                column("trouble", "yellow"),
                console=self.console,
                transient=False,
                expand=True,
            )
            self._progress.__enter__()
            empty: dict[str, Any] = dict.fromkeys(_FIELDS, "")
            self._task = self._progress.add_task("surge run", total=None, **empty)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None

    def update(self, snapshot: Snapshot, *, force: bool = False) -> None:
        if not self._enabled:
            return
        if self._progress is not None:
            finished = snapshot.done + snapshot.failed
            # Each column is followed by one space of padding.
            room = self.console.width - _MIN_BAR - len(_FIELDS)
            self._progress.update(
                self._task,
                completed=finished,
                total=snapshot.total,
                **self._fields(snapshot, room),
            )
            return
        now = time.monotonic()
        if force or now - self._last_log >= self._interval:
            self._last_log = now
            print(f"[surge] {snapshot.line()}", file=self._stream, flush=True)

    @staticmethod
    def _fields(snapshot: Snapshot, room: int) -> dict[str, Any]:
        """The columns' text: finished/total, ETA and cost always; then 429s and
        failures, then req/s, while they fit in `room` characters (the bar takes the
        rest); a column that does not fit is left empty."""
        finished = snapshot.done + snapshot.failed
        trouble = f"429s {snapshot.rate_limited:,}"
        if snapshot.failed:
            trouble += f" failed {snapshot.failed:,}"
        fields: dict[str, Any] = {
            "count": f"{finished:,}/{snapshot.total:,}",
            "eta": f"ETA {_duration(snapshot.eta)}",
            "cost": _usd(snapshot.cost),
            "rate": "",
            "trouble": "",
        }
        for name, text in (("trouble", trouble), ("rate", _per_second(snapshot.rate))):
            if sum(len(value) for value in fields.values()) + len(text) <= room:
                fields[name] = text
        return fields

    def note(self, message: str) -> None:
        if self._enabled:
            self.console.print(message)
