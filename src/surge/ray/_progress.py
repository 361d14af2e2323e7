"""One progress line for a whole `surge.ray.Processor` job, not one per worker.

Workers add their counts to a small actor once per batch (rows answered and failed,
tokens, the 429s their limiter saw since their last report), never per request; a
thread on the driver reads the sums twice a second and draws them with the job
display `surge run` uses (a rich line on a terminal, a log line every few seconds
elsewhere).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console

from surge.jobs.progress import ProgressDisplay, Snapshot, _duration, _per_second


@dataclass(frozen=True)
class Counts:
    """What the workers have reported so far, summed."""

    done: int = 0
    failed: int = 0
    tokens: int = 0
    rate_limited: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.done + other.done,
            self.failed + other.failed,
            self.tokens + other.tokens,
            self.rate_limited + other.rate_limited,
        )


class ProgressActor:
    """The sums, in one actor of the job (an actor runs one call at a time)."""

    def __init__(self) -> None:
        self._counts = Counts()
        self._started: float | None = None

    def add(self, counts: Counts, started: float) -> None:
        """`started`: when the reporting worker began its first batch (wall clock, which
        the nodes share closely enough for a rate)."""
        self._counts = self._counts + counts
        self._started = started if self._started is None else min(self._started, started)

    def counts(self) -> tuple[Counts, float | None]:
        return self._counts, self._started


def progress_actor() -> Any:
    """A new progress actor for one job, owned by the driver (gone with it)."""
    import ray

    return ray.remote(num_cpus=0)(ProgressActor).remote()


def cluster_line(snapshot: Snapshot) -> str:
    """The log line: rows finished/total, req/s, tok/s, 429s, failures and ETA."""
    total = f"{snapshot.total:,}" if snapshot.total else "?"
    tokens_rate = snapshot.tokens / snapshot.elapsed if snapshot.elapsed > 0 else 0.0
    eta = _duration(snapshot.eta) if snapshot.total else "?"
    return (
        f"{snapshot.done + snapshot.failed:,}/{total} rows | {_per_second(snapshot.rate)} | "
        f"{tokens_rate:,.0f} tok/s | 429s {snapshot.rate_limited:,} | "
        f"failed {snapshot.failed:,} | ETA {eta}"
    )


class ClusterDisplay(ProgressDisplay):
    """The job display, with tok/s where `surge run` shows its cost (a Processor knows no
    prices) and `[surge.ray]` log lines."""

    @staticmethod
    def _fields(snapshot: Snapshot, room: int) -> dict[str, Any]:
        finished = snapshot.done + snapshot.failed
        tokens_rate = snapshot.tokens / snapshot.elapsed if snapshot.elapsed > 0 else 0.0
        trouble = f"429s {snapshot.rate_limited:,}"
        if snapshot.failed:
            trouble += f" failed {snapshot.failed:,}"
        fields: dict[str, Any] = {
            "count": f"{finished:,}/{snapshot.total:,}",
            "eta": f"ETA {_duration(snapshot.eta)}",
            "cost": "",
            "rate": "",
            "trouble": "",
        }
        for name, text in (
            ("trouble", trouble),
            ("rate", _per_second(snapshot.rate)),
            ("cost", f"{tokens_rate:,.0f} tok/s"),
        ):
            if sum(len(value) for value in fields.values()) + len(text) <= room:
                fields[name] = text
        return fields

    def update(self, snapshot: Snapshot, *, force: bool = False) -> None:
        if not self._enabled or self._progress is not None:
            super().update(snapshot, force=force)
            return
        now = time.monotonic()
        if force or now - self._last_log >= self._interval:
            self._last_log = now
            print(f"[surge.ray] {cluster_line(snapshot)}", file=self._stream, flush=True)


class Watcher:
    """The driver's side: a daemon thread that polls the progress actor and draws.

    With `total` known (Ray knows the Dataset's row count from its metadata) it draws a
    bar on a terminal and stops when every row is finished; with `total` unknown (rows
    filtered, as on a resumed run) it logs a line when the counts change, at most every
    `interval` seconds, so nothing stays on screen after the job. Its clock starts when
    the first worker starts its first batch (the Dataset is lazy: nothing runs before it
    is consumed).
    """

    def __init__(
        self,
        actor: Any,
        *,
        total: int | None,
        stream: TextIO | None = None,
        console: Console | None = None,
        interval: float = 5.0,
        poll: float = 0.5,
    ) -> None:
        self.actor = actor
        self.total = total
        self.counts = Counts()
        self._stream = stream
        self._console = console
        self._interval = interval
        self._poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="surge-ray-progress", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the display has shown every row (or stopped); True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _read(self) -> tuple[Counts, float | None] | None:
        import ray

        try:
            read: tuple[Counts, float | None] = ray.get(self.actor.counts.remote(), timeout=10)
        except Exception:  # Ray shut down, or the job's actor is gone: nothing to show
            return None
        return read

    def _run(self) -> None:
        stream = self._stream or sys.stderr
        console = self._console or Console(file=stream)
        # A bar only where it can end: on a terminal, with the total known.
        bar = self.total is not None and console.is_terminal
        display = ClusterDisplay(
            stream=stream,
            console=console if bar else Console(file=stream, force_terminal=False),
            interval=self._interval,
        )
        shown = Counts()
        with display:
            while not self._stop.is_set():
                read = self._read()
                if read is None:
                    return
                counts, started = read
                self.counts = counts
                finished = counts.done + counts.failed
                last = self.total is not None and finished >= self.total
                if counts != shown and started is not None:
                    shown = counts
                    display.update(self._snapshot(counts, started), force=last)
                if last:
                    return
                self._stop.wait(self._poll)

    def _snapshot(self, counts: Counts, started: float) -> Snapshot:
        return Snapshot(
            done=counts.done, total=self.total or 0, failed=counts.failed, in_flight=0,
            retries=0, rate_limited=counts.rate_limited, tokens=counts.tokens, cost=None,
            elapsed=max(time.time() - started, 1e-3),
        )  # fmt: skip
