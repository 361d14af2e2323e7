"""Named simulator set-ups.

- ``default``: no limits, no latency, no faults.
- ``fast``: the same, said on purpose: for measuring client overhead.
- ``typical``: a call takes about 0.85 s (0.7 s to first token, 6 ms per token, 10-40
  tokens), so 7 calls one after another take about 6 s and 7 at once about 0.95 s,
  like the published 7-call benchmark (6.17 s and 0.85 s); 1 % of calls land in a
  3× heavy tail; no limits.
- ``openai-tier1``: typical latency under OpenAI tier-1 limits (500 RPM, 200k TPM).
- ``anthropic-tier1``: typical latency under Anthropic tier-1 limits
  (50 RPM, 50k input TPM, 10k output TPM).
- ``chaos``: typical latency, no limits, every fault kind on (about 12 % of calls).
- ``vllm``: capacity mode: no published limits, 32 concurrent slots, and latency
  that grows with load, like a self-hosted batching server.
"""

from __future__ import annotations

from typing import Any

from surge.sim.config import Faults, Latency, SimConfig

__all__ = ["PROFILES", "resolve"]

_TYPICAL = Latency(ttft=0.7, per_token=0.006, jitter=0.05, tail_p=0.01, tail_factor=3.0)

PROFILES: dict[str, SimConfig] = {
    "default": SimConfig(),
    "fast": SimConfig(),
    "typical": SimConfig(latency=_TYPICAL),
    "openai-tier1": SimConfig(latency=_TYPICAL, rpm=500, tpm=200_000),
    "anthropic-tier1": SimConfig(latency=_TYPICAL, rpm=50, itpm=50_000, otpm=10_000),
    "chaos": SimConfig(
        latency=_TYPICAL,
        faults=Faults(
            error_500=0.02,
            error_502=0.01,
            error_503=0.02,
            hang=0.01,
            reset=0.02,
            malformed=0.02,
            slow=0.02,
            slow_seconds=3.0,
            hang_seconds=None,
        ),
    ),
    "vllm": SimConfig(
        latency=Latency(ttft=0.05, per_token=0.01, jitter=0.05),
        capacity=32,
        capacity_slowdown=1.0,
    ),
}


def resolve(config: SimConfig | None, profile: str | None, changes: dict[str, Any]) -> SimConfig:
    """The config a server runs: ``config`` or ``PROFILES[profile]``, with ``changes``.

    Example:
        >>> resolve(None, "openai-tier1", {"rpm": 60}).rpm
        60
    """
    if config is not None and profile is not None:
        raise ValueError(
            "pass a config or a profile, not both. HINT: config.replace(...) edits one."
        )
    if config is None:
        if profile is None:
            profile = "default"
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}. HINT: one of {', '.join(PROFILES)}.")
        config = PROFILES[profile]
    return config.replace(**changes) if changes else config
