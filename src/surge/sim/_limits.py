"""Per-key token buckets and the rate-limit header formats of OpenAI and Anthropic.

A bucket holds at most ``burst_seconds × limit/60`` units and refills continuously at
``limit/60`` per second (the GCRA view of a token bucket, computed lazily from the
last update, so no timers run: https://en.wikipedia.org/wiki/Generic_cell_rate_algorithm).
A request fits when every bucket holds its cost; a cost larger than a bucket's whole
capacity fits when that bucket is full and leaves it in debt, so a huge request is
slow rather than impossible. A refused request takes nothing.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

__all__ = ["BUCKET_KINDS", "Bucket", "Limiter", "format_duration", "parse_duration", "rfc3339"]

#: Bucket kinds, in the order a refusal reports them when several are short.
BUCKET_KINDS = ("requests", "tokens", "input_tokens", "output_tokens")
_EPS = 1e-9


class Bucket:
    """One token bucket; ``now`` is any monotonic clock in seconds."""

    __slots__ = ("capacity", "level", "limit", "rate", "stamp")

    def __init__(self, limit: int, burst_seconds: float, now: float) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.capacity = self.rate * burst_seconds
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait(self, cost: float) -> float:
        """Seconds until ``cost`` fits (0 when it fits now); call ``refill`` first."""
        need = min(cost, self.capacity)
        if self.level + _EPS >= need:
            return 0.0
        return (need - self.level) / self.rate

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.level + _EPS))

    @property
    def reset_in(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.rate)


class Limiter:
    """The buckets of every key, created on first sight of a key."""

    def __init__(self, limits: dict[str, int | None], burst_seconds: float) -> None:
        self.limits = {kind: limit for kind, limit in limits.items() if limit is not None}
        self.burst_seconds = burst_seconds
        self.keys: dict[str, dict[str, Bucket]] = {}

    @property
    def active(self) -> bool:
        return bool(self.limits)

    def buckets(self, key: str, now: float) -> dict[str, Bucket]:
        buckets = self.keys.get(key)
        if buckets is None:
            buckets = {k: Bucket(v, self.burst_seconds, now) for k, v in self.limits.items()}
            self.keys[key] = buckets
        for bucket in buckets.values():
            bucket.refill(now)
        return buckets

    def admit(
        self, key: str, costs: dict[str, int], now: float
    ) -> tuple[dict[str, Bucket], float, str | None]:
        """Take ``costs`` from ``key``'s buckets if they all fit.

        Returns the buckets, and 0 with None when admitted, or the seconds until the
        request would fit with the kind of the bucket that is shortest of it.
        """
        buckets = self.buckets(key, now)
        worst, kind = 0.0, None
        for name, bucket in buckets.items():
            wait = bucket.wait(costs.get(name, 0))
            if wait > worst:
                worst, kind = wait, name
        if kind is None:
            for name, bucket in buckets.items():
                bucket.level -= costs.get(name, 0)
        return buckets, worst, kind

    def clear(self) -> None:
        self.keys.clear()


def _seconds_text(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def format_duration(seconds: float) -> str:
    """OpenAI's reset format, rounded up to the millisecond.

    Example:
        >>> [format_duration(s) for s in (0, 0.02, 1.5, 360, 3725.25)]
        ['0s', '20ms', '1.5s', '6m0s', '1h2m5.25s']
    """
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return _seconds_text(ms / 1000) + "s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{hours}h" if hours else ""
    return f"{text}{minutes}m{_seconds_text(rest / 1000)}s"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float:
    """Seconds in an OpenAI duration such as ``6m0s`` or ``20ms``.

    Example:
        >>> parse_duration("1h2m5.25s"), parse_duration("20ms")
        (3725.25, 0.02)
    """
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not an OpenAI duration: {text!r}")
    return round(sum(float(n) * _UNIT[u] for n, u in parts), 6)


def rfc3339(wall: float) -> str:
    """A UNIX time as RFC 3339 in UTC with milliseconds, as Anthropic's reset headers.

    Example:
        >>> rfc3339(0.5)
        '1970-01-01T00:00:00.500Z'
    """
    stamp = datetime.fromtimestamp(wall, timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
