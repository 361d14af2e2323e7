"""What happens to one admitted request: its fault (if any) and its latency.

Each decision is a pure function of ``(seed, content_key, attempt)``, where attempt
counts the earlier *admitted* requests with the same content (0 for the first; 429s
and 401/400s don't count). So replies, faults and latencies don't depend on the
order in which concurrent requests arrive, and a retry of a failed request draws
afresh, as with a real provider.

The draw: BLAKE2b-512 of ``f"{seed}:{key}:{attempt}"`` gives eight uniforms u0..u7
(8 bytes each, / 2**64). u0 picks the fault by walking the cumulative probabilities in
``Faults.probabilities()`` order; u1, u2 give a standard normal z (Box-Muller) and
the jitter multiplier exp(jitter × z); u3 < tail_p puts the call in the tail, where
it is further multiplied by tail_factor / sqrt(1 - u4) (Pareto, α=2), capped at
10 × tail_factor.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from surge.sim.config import SimConfig
from surge.sim.replies import content_key

__all__ = ["FAULT_KINDS", "INSTANT", "Plan", "plan", "plan_for_key"]

FAULT_KINDS = ("500", "502", "503", "hang", "reset", "malformed", "slow")


@dataclass(frozen=True)
class Plan:
    """The fate of one admitted request.

    ``ttft`` is the delay before the first token (the whole head of a non-streamed
    reply) and ``per_token`` the delay per output token, jitter and tail included.
    """

    fault: str | None
    ttft: float
    per_token: float
    multiplier: float

    def total(self, output_tokens: int) -> float:
        """Seconds until a non-streamed reply of ``output_tokens`` tokens is sent."""
        return self.ttft + self.per_token * output_tokens


INSTANT = Plan(None, 0.0, 0.0, 1.0)


def _uniforms(seed: int, key: str, attempt: int) -> list[float]:
    digest = hashlib.blake2b(f"{seed}:{key}:{attempt}".encode(), digest_size=64).digest()
    return [int.from_bytes(digest[i : i + 8], "little") / 2**64 for i in range(0, 64, 8)]


def plan_for_key(key: str, attempt: int, config: SimConfig) -> Plan:
    """The plan for content ``key`` on its ``attempt``-th admission."""
    if config.latency.is_zero and not config.faults.any:
        return INSTANT  # nothing to draw: skip the hash on the zero-latency fast path
    u = _uniforms(config.seed, key, attempt)
    fault: str | None = None
    edge = 0.0
    for kind, p in config.faults.probabilities().items():
        edge += p
        if p > 0 and u[0] < edge:
            fault = kind
            break
    lat = config.latency
    multiplier = 1.0
    if lat.jitter > 0:
        z = math.sqrt(-2.0 * math.log(1.0 - u[1])) * math.cos(2.0 * math.pi * u[2])
        multiplier = math.exp(lat.jitter * z)
    if lat.tail_p > 0 and u[3] < lat.tail_p:
        multiplier *= min(lat.tail_factor / math.sqrt(1.0 - u[4]), 10.0 * lat.tail_factor)
    return Plan(fault, lat.ttft * multiplier, lat.per_token * multiplier, multiplier)


def plan(body: dict[str, Any], *, attempt: int = 0, config: SimConfig | None = None) -> Plan:
    """The fault and latency the simulator will give ``body`` on its ``attempt``-th admission.

    Example:
        >>> from surge.sim.config import Faults, Latency
        >>> cfg = SimConfig(seed=1, latency=Latency(ttft=0.5), faults=Faults(hang=1.0))
        >>> p = plan({"messages": []}, config=cfg)
        >>> p.fault, p.ttft
        ('hang', 0.5)
    """
    return plan_for_key(content_key(body), attempt, config or SimConfig())
