"""What a call tells the engine besides its value: usage and the provider's rate-limit state.

A call may return anything. The engine looks for feedback in three places:
- a `Reply(value, usage=..., headers=...)` wrapper, which it unwraps;
- a `usage` attribute or key on the value (OpenAI's prompt/completion tokens,
  Anthropic's input/output tokens);
- a `headers` mapping on the value (an `httpx.Response`).
Errors carry the same feedback on their response (see `surge._retry.classify`).
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from surge._results import Usage

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LimitHint:
    """The server's own count for one dimension (requests, tokens, ...)."""

    limit: float | None = None
    """Per-minute limit."""
    remaining: float | None = None
    reset: float | None = None
    """Seconds until the dimension is back to its full allowance."""

    def server_burst(self) -> float | None:
        """The capacity the server allows at once: what remains plus what refills by reset.

        For a token bucket of capacity B and rate r, remaining + reset * r == B.
        """
        if self.limit is None or self.remaining is None or self.reset is None:
            return None
        return self.remaining + self.reset * self.limit / 60.0


@dataclass(frozen=True, slots=True)
class RateLimitHints:
    """Rate-limit state read off one response. `dimensions` maps e.g. "requests",
    "tokens", "input_tokens", "output_tokens" to a LimitHint."""

    retry_after: float | None = None
    dimensions: Mapping[str, LimitHint] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.retry_after is not None or bool(self.dimensions)


@dataclass(frozen=True, slots=True)
class Reply(Generic[T]):
    """Return this from a call to hand the engine usage and headers explicitly::

    async def call(prompt):
        raw = await client.chat.completions.with_raw_response.create(...)
        completion = raw.parse()
        return surge.Reply(completion, headers=raw.headers)
    """

    value: T
    usage: Usage | None = None
    headers: Mapping[str, str] | None = None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float | None:
    """Parse OpenAI's reset durations ("20ms", "1.5s", "6m0s", "1h2m3s") or plain seconds."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _retry_after(headers: dict[str, str], now: float | None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _parse_reset_timestamp(text: str, now: float) -> float | None:
    """Anthropic gives resets as RFC 3339 timestamps."""
    from datetime import datetime

    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return parse_duration(text)
    return max(0.0, when - now)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


_ANTHROPIC_DIMENSIONS = ("requests", "tokens", "input-tokens", "output-tokens")
_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "retry-after")


def _relevant(headers: Mapping[str, str]) -> dict[str, str]:
    """The rate-limit headers, names lower-cased: one pass over the response's headers,
    after which every lookup is a plain dict hit (and a plain dict's case is folded)."""
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith(_PREFIXES)}


def _hint(limit: str | None, remaining: str | None, reset: float | None) -> LimitHint | None:
    if limit is None and remaining is None and reset is None:
        return None
    return LimitHint(limit=_number(limit), remaining=_number(remaining), reset=reset)


def parse_rate_limit_headers(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> RateLimitHints:
    """Read OpenAI-style `x-ratelimit-*` and Anthropic-style `anthropic-ratelimit-*` headers."""
    found = _relevant(headers) if headers else {}
    if not found:  # most responses of an endpoint without published limits
        return RateLimitHints()
    wall = time.time() if now is None else now
    dimensions: dict[str, LimitHint] = {}
    for name in ("requests", "tokens"):
        reset = found.get(f"x-ratelimit-reset-{name}")
        hint = _hint(
            found.get(f"x-ratelimit-limit-{name}"),
            found.get(f"x-ratelimit-remaining-{name}"),
            None if reset is None else parse_duration(reset),
        )
        if hint is not None:
            dimensions[name] = hint
    for name in _ANTHROPIC_DIMENSIONS:
        reset = found.get(f"anthropic-ratelimit-{name}-reset")
        hint = _hint(
            found.get(f"anthropic-ratelimit-{name}-limit"),
            found.get(f"anthropic-ratelimit-{name}-remaining"),
            None if reset is None else _parse_reset_timestamp(reset, wall),
        )
        if hint is not None:
            dimensions[name.replace("-", "_")] = hint
    return RateLimitHints(retry_after=_retry_after(found, wall), dimensions=dimensions)


def extract_usage(value: Any) -> Usage | None:
    """Find token usage on an SDK object or a decoded JSON body, whichever shape it has."""
    usage = value.get("usage") if isinstance(value, Mapping) else getattr(value, "usage", None)
    if usage is None:
        return None
    if isinstance(usage, Usage):
        return usage

    def field_(name: str) -> int | None:
        raw = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
        return raw if isinstance(raw, int) else None

    input_tokens = field_("prompt_tokens")
    if input_tokens is None:
        input_tokens = field_("input_tokens")
    output_tokens = field_("completion_tokens")
    if output_tokens is None:
        output_tokens = field_("output_tokens")
    if input_tokens is None and output_tokens is None:
        total = field_("total_tokens")
        return None if total is None else Usage(total, 0)
    return Usage(input_tokens or 0, output_tokens or 0)


def extract_headers(value: Any) -> Mapping[str, str] | None:
    headers = getattr(value, "headers", None)
    return headers if isinstance(headers, Mapping) else None
