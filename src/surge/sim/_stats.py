"""Counters the simulator keeps for tests, benchmarks and ``GET /sim/stats``."""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["Stats"]

# Columns of one per-second timeline row.
_STARTED, _OK, _LIMITED, _ERRORS, _IN_TOK, _OUT_TOK = range(6)
# Distinct unknown paths named in the stats; any more are counted under "other".
_NOT_FOUND_PATHS = 100


class Stats:
    """Mutable counters; ``snapshot()`` gives the JSON-able view."""

    def __init__(self, now: float, wall: float) -> None:
        self.reset(now, wall)

    def reset(self, now: float, wall: float) -> None:
        self.t0 = now
        self.wall0 = wall
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.by_key: dict[str, dict[str, Any]] = {}
        self.attempts: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.not_found: Counter[str] = Counter()
        self.in_flight = 0
        self.peak_concurrency = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.timeline: list[list[int]] = []

    def _row(self, now: float) -> list[int]:
        second = max(0, int(now - self.t0))
        while len(self.timeline) <= second:
            self.timeline.append([0, 0, 0, 0, 0, 0])
        return self.timeline[second]

    def _key(self, key: str) -> dict[str, Any]:
        entry = self.by_key.get(key)
        if entry is None:
            entry = {"requests": 0, "by_status": Counter(), "input_tokens": 0, "output_tokens": 0}
            self.by_key[key] = entry
        return entry

    def start(self, key: str, now: float) -> None:
        self.requests += 1
        self.in_flight += 1
        if self.in_flight > self.peak_concurrency:
            self.peak_concurrency = self.in_flight
        self._key(key)["requests"] += 1
        self._row(now)[_STARTED] += 1

    def unknown_path(self, method: str, path: str, now: float) -> None:
        """A request to a path no real API serves (answered 404): counted with the
        rest, and by path, so a wrong base URL shows in the stats."""
        self.requests += 1
        self.by_status["404"] += 1
        row = self._row(now)
        row[_STARTED] += 1
        row[_ERRORS] += 1
        name = f"{method} {path}"
        if name not in self.not_found and len(self.not_found) >= _NOT_FOUND_PATHS:
            name = "other"
        self.not_found[name] += 1

    def finish(
        self,
        key: str,
        status: str,
        now: float,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        self.in_flight -= 1
        self.by_status[status] += 1
        entry = self._key(key)
        entry["by_status"][status] += 1
        row = self._row(now)
        if status == "200":
            row[_OK] += 1
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens
            entry["input_tokens"] += input_tokens
            entry["output_tokens"] += output_tokens
            row[_IN_TOK] += input_tokens
            row[_OUT_TOK] += output_tokens
        elif status == "429":
            row[_LIMITED] += 1
        else:
            row[_ERRORS] += 1

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "uptime_s": round(now - self.t0, 6),
            "started_at": self.wall0,
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "by_key": {
                key: {**entry, "by_status": dict(entry["by_status"])}
                for key, entry in self.by_key.items()
            },
            "attempts": dict(self.attempts),
            "faults": dict(self.faults),
            "not_found": dict(self.not_found),
            "in_flight": self.in_flight,
            "peak_concurrency": self.peak_concurrency,
            "tokens": {
                "input": self.input_tokens,
                "output": self.output_tokens,
                "total": self.input_tokens + self.output_tokens,
            },
            "timeline": [
                {
                    "second": i,
                    "started": r[_STARTED],
                    "ok": r[_OK],
                    "rate_limited": r[_LIMITED],
                    "errors": r[_ERRORS],
                    "input_tokens": r[_IN_TOK],
                    "output_tokens": r[_OUT_TOK],
                }
                for i, r in enumerate(self.timeline)
            ],
        }
