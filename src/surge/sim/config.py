"""Configuration of the simulator: limits, latency, faults, replies.

Everything is a frozen dataclass, so a profile is a plain value that can be copied
with changes (`dataclasses.replace`) and shared between servers safely.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_MAX_TOKENS", "KNOWN_MODELS", "POISON", "Faults", "Latency", "SimConfig"]

#: Output tokens a chat request is charged for when it sends no ``max_tokens``.
DEFAULT_MAX_TOKENS = 256
#: A request whose content contains this string always gets HTTP 400.
POISON = "SURGE_POISON"
#: The models a simulator serves unless told otherwise: its own, and popular OpenAI and
#: Anthropic names, so a job written for a real provider runs against it unchanged.
#: A dated snapshot (``gpt-4o-mini-2024-07-18``, ``claude-3-5-haiku-20241022``) or a
#: ``-latest`` alias of a listed name is known too; a misspelt name is not.
KNOWN_MODELS: tuple[str, ...] = (
    "sim-small", "sim-large", "sim-embed",
    "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano",
    "gpt-4o", "gpt-4o-mini", "gpt-4-turbo", "gpt-3.5-turbo",
    "o1", "o1-mini", "o3", "o3-mini", "o4-mini",
    "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
    "claude-3-haiku", "claude-3-5-haiku", "claude-3-5-sonnet", "claude-3-7-sonnet",
    "claude-3-opus", "claude-sonnet-4", "claude-sonnet-4-5", "claude-opus-4",
    "claude-opus-4-1", "claude-opus-4-5", "claude-haiku-4-5",
)  # fmt: skip
_SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} is not a probability. HINT: pass a number in [0, 1].")


def _check_non_negative(name: str, value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{name}={value!r} is negative. HINT: pass 0 or a positive number.")


@dataclass(frozen=True, kw_only=True)
class Latency:
    """How long an admitted request takes.

    total = (ttft + per_token × output_tokens) × jitter × tail, where jitter is
    log-normal with median 1 and shape ``jitter`` (0 = none), and with probability
    ``tail_p`` the call lands in a heavy (Pareto, α=2) tail at least ``tail_factor``
    times slower. A stream sends its first token after the (scaled) ttft and one token
    every (scaled) per_token after that.

    Example:
        >>> Latency(ttft=0.4, per_token=0.016, jitter=0.1).median(25)
        0.8
    """

    ttft: float = 0.0
    per_token: float = 0.0
    jitter: float = 0.0
    tail_p: float = 0.0
    tail_factor: float = 4.0

    def __post_init__(self) -> None:
        for name in ("ttft", "per_token", "jitter", "tail_factor"):
            _check_non_negative(name, getattr(self, name))
        _check_probability("tail_p", self.tail_p)

    @classmethod
    def parse(cls, text: str) -> Latency:
        """``TTFT[,PER_TOKEN[,JITTER]]`` in seconds, as ``surge sim --latency`` takes it.

        Example:
            >>> Latency.parse("0.4,0.016,0.1")
            Latency(ttft=0.4, per_token=0.016, jitter=0.1, tail_p=0.0, tail_factor=4.0)
        """
        parts = text.split(",")
        try:
            values = [float(part) for part in parts]
        except ValueError:
            values = []
        if not 1 <= len(values) <= 3 or len(parts) != len(values):
            raise ValueError(
                f"{text!r} is not TTFT[,PER_TOKEN[,JITTER]] in seconds, e.g. 0.4,0.016"
            )
        names = ("ttft", "per_token", "jitter")
        return cls(**dict(zip(names[: len(values)], values, strict=True)))

    @property
    def is_zero(self) -> bool:
        return self.ttft == 0.0 and self.per_token == 0.0

    def median(self, output_tokens: int) -> float:
        """Median seconds for a reply of ``output_tokens`` tokens (no tail)."""
        return round(self.ttft + self.per_token * output_tokens, 9)


@dataclass(frozen=True, kw_only=True)
class Faults:
    """Probability of each fault for an admitted request; they are exclusive.

    - ``error_500`` / ``error_502`` / ``error_503``: that status with a provider-shaped
      error body.
    - ``hang``: no answer until the client disconnects (or ``hang_seconds`` pass, then 504).
    - ``reset``: headers and part of the body, then the TCP connection is reset.
    - ``malformed``: HTTP 200 whose body is truncated JSON.
    - ``slow``: a correct answer whose body trickles out over ``slow_seconds``.

    Example:
        >>> Faults.uniform_5xx(0.06).error_503
        0.02
    """

    error_500: float = 0.0
    error_502: float = 0.0
    error_503: float = 0.0
    hang: float = 0.0
    reset: float = 0.0
    malformed: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 2.0
    hang_seconds: float | None = None

    def __post_init__(self) -> None:
        for kind, p in self.probabilities().items():
            _check_probability(kind, p)
        if sum(self.probabilities().values()) > 1.0 + 1e-9:
            raise ValueError("fault probabilities add up to more than 1. HINT: lower some of them.")
        _check_non_negative("slow_seconds", self.slow_seconds)
        _check_non_negative("hang_seconds", self.hang_seconds)

    @classmethod
    def uniform_5xx(cls, p: float, **others: Any) -> Faults:
        """Split ``p`` evenly between 500, 502 and 503."""
        third = round(p / 3, 12)
        return cls(error_500=third, error_502=third, error_503=third, **others)

    def probabilities(self) -> dict[str, float]:
        """Fault kind → probability, in the fixed order used to draw them."""
        return {
            "500": self.error_500,
            "502": self.error_502,
            "503": self.error_503,
            "hang": self.hang,
            "reset": self.reset,
            "malformed": self.malformed,
            "slow": self.slow,
        }

    @property
    def any(self) -> bool:
        return any(p > 0 for p in self.probabilities().values())


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Everything a simulator does, as one value.

    Limits are per API key (the Bearer token or ``x-api-key``; no key is one anonymous
    key) and ``None`` means unlimited (no headers for that bucket). A request costs one
    request and ``count_tokens(body) + max_tokens`` tokens (``DEFAULT_MAX_TOKENS`` when
    absent); ``itpm``/``otpm`` add Anthropic-style input-only and max_tokens-only
    buckets. Each bucket refills at limit/60 per second and holds at most
    ``burst_seconds`` of that rate.

    ``capacity`` turns on capacity mode: at most that many requests are generated at
    once (the rest queue, FIFO), and each one is slowed by
    ``1 + capacity_slowdown × (others generating) / capacity`` like a batched vLLM
    server; with ``capacity_queue`` set, arrivals beyond that many waiting get 503.

    ``models`` are the models ``GET /v1/models`` lists. With ``any_model=False`` a
    request naming another model gets 404 as the real APIs answer it (OpenAI's
    ``model_not_found``, Anthropic's ``not_found_error``), so a wrong ``--model`` can be
    tested here; see ``knows_model``. The default accepts any name (tests use short
    ones); ``surge sim`` refuses unknown names unless given ``--any-model``.

    Example:
        >>> SimConfig(rpm=600, tpm=100_000, seed=7).burst_seconds
        10.0
    """

    rpm: int | None = None
    tpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    burst_seconds: float = 10.0
    latency: Latency = field(default_factory=Latency)
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    api_keys: frozenset[str] | None = None
    poison: str | None = POISON
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    reply_tokens: tuple[int, int] = (10, 40)
    embedding_dim: int = 256
    capacity: int | None = None
    capacity_slowdown: float = 1.0
    capacity_queue: int | None = None
    models: tuple[str, ...] = KNOWN_MODELS
    any_model: bool = True

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "itpm", "otpm", "capacity"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}={value!r} must be positive. HINT: None means unlimited.")
        if self.burst_seconds <= 0:
            raise ValueError("burst_seconds must be positive. HINT: 10 matches most providers.")
        lo, hi = self.reply_tokens
        if not 1 <= lo <= hi:
            raise ValueError("reply_tokens must be (lo, hi) with 1 <= lo <= hi.")
        if self.embedding_dim < 1:
            raise ValueError("embedding_dim must be at least 1.")
        _check_non_negative("capacity_slowdown", self.capacity_slowdown)
        _check_non_negative("capacity_queue", self.capacity_queue)
        if isinstance(self.api_keys, (str, bytes)):
            raise TypeError("api_keys must be a set of keys. HINT: api_keys=frozenset({'k'}).")
        if self.api_keys is not None and not isinstance(self.api_keys, frozenset):
            object.__setattr__(self, "api_keys", frozenset(self.api_keys))
        if isinstance(self.models, (str, bytes)):
            raise TypeError("models must be a list of names. HINT: models=('sim-small',).")
        if not isinstance(self.models, tuple):
            object.__setattr__(self, "models", tuple(self.models))

    def knows_model(self, name: object) -> bool:
        """Whether a request for model ``name`` is served (always, with ``any_model``).

        A listed name, or a dated snapshot or ``-latest`` alias of one.

        Example:
            >>> config = SimConfig(any_model=False)
            >>> [config.knows_model(m) for m in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4o-mnii")]
            [True, True, False]
        """
        if self.any_model:
            return True
        if not isinstance(name, str):
            return False
        if name in self.models:
            return True
        return any(
            name.startswith(known) and _SNAPSHOT_SUFFIX.fullmatch(name[len(known) :])
            for known in self.models
        )

    def replace(self, **changes: Any) -> SimConfig:
        """A copy with ``changes``; ``latency``/``faults`` may be given as dicts of changes.

        Example:
            >>> SimConfig().replace(rpm=60, latency={"ttft": 0.1}).latency.ttft
            0.1
        """
        for name, sub in (("latency", self.latency), ("faults", self.faults)):
            if isinstance(changes.get(name), dict):
                changes[name] = dataclasses.replace(sub, **changes[name])
        return dataclasses.replace(self, **changes)
