"""The shared limiter on virtual time: several workers (limiters) lease one key's budget.

Each worker is a `surge.Limiter(shared=store, key=...)` running `surge.gather` in one
VirtualTimeLoop; the store is the in-process ledger on the same clock, with a little
latency so exchanges really are asynchronous. Redis and Ray backends run the same
protocol (tests/test_shared_limiter_redis.py, tests/scale_out/).
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import surge
from surge._feedback import LimitHint, RateLimitHints
from surge._shared import LeaseClient, MemoryStore
from surge._shared._ledger import exchange, new_state
from surge.testing import run

if TYPE_CHECKING:  # a fixture's type; `pytest` alone does not put the root on sys.path
    from tests.conftest import Fleet


def test_three_workers_share_one_rate_to_within_a_few_percent(fleet: Fleet) -> None:
    span = run(fleet.share(MemoryStore(latency=0.002), 3, 400, rpm=3000))
    rate, burst = 50.0, 50.0  # 3,000 rpm; burst 1 s of rate
    assert len(fleet.admitted) == 1200 and len(fleet.limiters) == 3
    physical = (1200 - burst) / rate
    assert span >= physical - 0.5
    assert span <= physical * 1.03, f"{span:.1f} s for a physical limit of {physical:.1f} s"
    for window in (1.0, 5.0, 20.0):
        assert fleet.max_in_window(window) <= burst + rate * window + 1
    # Off the per-request path: each exchange leases several calls at once.
    exchanges = sum(lim._shared.exchanges for lim in fleet.limiters if lim._shared)
    assert exchanges < 1200 / 2, exchanges
    assert all(lim.statistics().granted == 400 for lim in fleet.limiters)


def test_a_worker_that_dies_holding_leases_leaks_them_for_one_ttl_only(fleet: Fleet) -> None:
    async def main() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        store = MemoryStore()
        # The dead worker: takes as big a lease as it may, then never spends nor returns.
        dead = LeaseClient(store, "prod", ttl=3.0, lease_seconds=5.0)
        dead.bucket("requests", rate=10.0, capacity=100.0)
        dead.attach(loop, wake=lambda: None, hold=lambda s: None, adopt=lambda *a: None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        held_by_dead = dead.held("requests", loop.time())
        await fleet.worker(store, 300, rpm=600, burst=10.0)
        leases = store.state("prod")["leases"].values()
        return held_by_dead, sum(lease["c"] == dead.client_id for lease in leases)

    held_by_dead, dead_leases_left = run(main())
    assert held_by_dead == 50  # it really held half the burst
    assert len(fleet.admitted) == 300
    span = max(fleet.admitted) - min(fleet.admitted)
    # 300 calls with a 100-call burst at 10/s: 20 s, and the dead worker's 50 cost 5 s
    # (as if it had sent them); its lease no longer counts against the burst after 3 s.
    assert span <= (300 - 100 + held_by_dead) / 10.0 + 0.5
    assert dead_leases_left == 0  # expired out of the store


def test_retry_after_seen_by_one_worker_pauses_every_worker() -> None:
    async def main() -> tuple[float, list[float]]:
        loop = asyncio.get_running_loop()
        store = MemoryStore(latency=0.001)
        first = surge.Limiter(rpm=6000, shared=store, key="prod")
        second = surge.Limiter(rpm=6000, shared=store, key="prod")
        release = first.release
        permit = await first.acquire()
        release(permit, outcome="rate_limited", hints=RateLimitHints(retry_after=5.0))
        paused_at = loop.time()
        await asyncio.sleep(0.01)
        starts = []
        for _ in range(3):
            p = await second.acquire()
            starts.append(loop.time())
            second.release(p)
        return paused_at, starts

    paused_at, starts = run(main())
    assert starts[0] >= paused_at + 5.0 - 0.01


def test_the_providers_remaining_count_seen_by_one_worker_holds_back_the_others() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        store = MemoryStore(latency=0.001)
        seer = surge.Limiter(rpm=600, burst=10.0, shared=store, key="prod")
        other = surge.Limiter(rpm=600, burst=10.0, shared=store, key="prod")
        permit = await seer.acquire()
        # The provider says the key has nothing left for now (another app is using it).
        hint = LimitHint(limit=600, remaining=0, reset=6.0)
        seer.release(permit, hints=RateLimitHints(dimensions={"requests": hint}))
        await asyncio.sleep(0.01)
        start = loop.time()
        p = await other.acquire()
        other.release(p)
        p = await other.acquire()
        return start, loop.time()

    start, second_at = run(main())
    # Without the correction `other` would take two at once from a 100-call burst.
    assert second_at - start >= 0.09


def test_a_limit_learned_from_headers_reaches_a_worker_started_later() -> None:
    async def main() -> surge.LimiterStatistics:
        store = MemoryStore(latency=0.001)
        seer = surge.Limiter(shared=store, key="prod")
        permit = await seer.acquire()
        seer.release(
            permit,
            hints=RateLimitHints(
                dimensions={"requests": LimitHint(limit=1200, remaining=10, reset=0.5)}
            ),
        )
        await asyncio.sleep(0.01)
        late = surge.Limiter(shared=store, key="prod")
        await late.acquire()
        await asyncio.sleep(0.01)
        return late.statistics()

    stats = run(main())
    assert [b.name for b in stats.buckets] == ["requests"]
    assert stats.buckets[0].rate_per_minute == pytest.approx(1200)


def test_a_store_that_stops_answering_holds_calls_back_and_they_go_when_it_returns(
    fleet: Fleet,
) -> None:
    class Flaky(MemoryStore):
        down = False

        async def exchange(self, key: str, request: dict[str, Any]) -> dict[str, Any]:
            if self.down:
                raise ConnectionError("store down")
            return await super().exchange(key, request)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        store = Flaky()
        store.down = True
        loop.call_later(2.0, lambda: setattr(store, "down", False))
        await fleet.worker(store, 50, rpm=600)

    run(main())
    assert len(fleet.admitted) == 50
    assert min(fleet.admitted) >= 2.0  # nothing went out without a lease


def test_shared_needs_a_key_and_a_known_store() -> None:
    with pytest.raises(ValueError, match="HINT"):
        surge.Limiter(rpm=10, shared=MemoryStore())
    with pytest.raises(ValueError, match="HINT: pass 'redis"):
        surge.Limiter(rpm=10, shared="http://localhost:6379", key="k")
    with pytest.raises(ValueError, match="needs shared="):
        surge.Limiter(rpm=10, key="k")


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 3),  # client
            st.floats(0.0, 2.0),  # seconds since the last step
            st.floats(0.0, 40.0),  # want
            st.floats(0.0, 1.0),  # fraction of its leases the client has spent
        ),
        max_size=40,
    )
)
def test_the_ledger_never_lets_level_plus_outstanding_exceed_the_burst(
    steps: list[tuple[int, float, float, float]],
) -> None:
    state = new_state()
    now = 0.0
    held: dict[int, dict[str, dict[str, float]]] = {c: {} for c in range(4)}
    for client, dt, want, spent in steps:
        now += dt
        report = {
            i: {"requests": a["requests"] * (1 - spent)}
            for i, a in held[client].items()
            if state["leases"].get(i, {}).get("exp", -1) > now
        }
        reply = exchange(
            state,
            {
                "client": str(client),
                "ttl": 3.0,
                "defaults": {"requests": {"rate": 10.0, "cap": 30.0}},
                "held": report,
                "want": {"requests": want},
            },
            now,
        )
        held[client] = dict(report)
        if reply["lease"]:
            held[client][reply["lease"]] = dict(reply["granted"])
        dim = state["dims"]["requests"]
        outstanding = sum(
            lease["amt"].get("requests", 0.0)
            for lease in state["leases"].values()
            if lease["exp"] > now
        )
        assert dim["level"] + outstanding <= dim["cap"] + 1e-6
        assert math.isfinite(dim["level"])


def test_the_servers_burst_learned_by_one_worker_is_spent_by_all() -> None:
    admitted: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        store = MemoryStore(latency=0.001)
        seer = surge.Limiter(rpm=600, shared=store, key="prod")  # 1 s of burst: 10
        permit = await seer.acquire()
        # The server allows a 10 s burst (100) and has 99 left.
        hint = LimitHint(limit=600, remaining=99, reset=0.1)
        seer.release(permit, hints=RateLimitHints(dimensions={"requests": hint}))
        await asyncio.sleep(0.01)

        async def call(i: int) -> int:
            admitted.append(loop.time())
            return i

        others = [surge.Limiter(rpm=600, shared=store, key="prod") for _ in range(2)]
        await asyncio.gather(*(surge.gather(call, range(45), limiter=o) for o in others))

    run(main())
    assert len(admitted) == 90
    assert max(admitted) - min(admitted) < 1.0  # spent from the burst, not at 10/s


def test_a_burst_revealed_while_an_exchange_is_out_is_still_learned() -> None:
    # The header arrives while this worker's lease prefetch is on its way to the store:
    # the store's reply (its config, older than the header) must not undo what was learned.
    admitted: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        store = MemoryStore(latency=0.05)
        seer = surge.Limiter(rpm=600, shared=store, key="prod")  # 1 s of burst: 10
        permit = await seer.acquire()
        assert seer._shared is not None
        seer._shared._start()  # an exchange in flight, as a prefetch would be
        await asyncio.sleep(0.01)  # its request is on the wire
        hint = LimitHint(limit=600, remaining=99, reset=0.1)  # the server's burst is 100
        seer.release(permit, hints=RateLimitHints(dimensions={"requests": hint}))
        await asyncio.sleep(0.5)

        async def call(i: int) -> int:
            admitted.append(loop.time())
            return i

        others = [surge.Limiter(rpm=600, shared=store, key="prod") for _ in range(2)]
        await asyncio.gather(*(surge.gather(call, range(40), limiter=o) for o in others))
        for limiter in (seer, *others):
            await limiter.aclose()

    run(main())
    assert len(admitted) == 80
    assert max(admitted) - min(admitted) < 1.0  # spent from the learned burst, not at 10/s
