"""Limiter: weighted buckets, header feedback, pauses, adaptive concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import surge
from surge.testing import run

hints = surge.RateLimitHints
hint = surge.LimitHint


@settings(max_examples=60, deadline=None)
@given(
    rpm=st.integers(60, 6000),
    tpm=st.integers(1_000, 100_000),
    burst=st.floats(0.2, 5.0),
    requests=st.lists(
        st.tuples(st.floats(0.0, 2.0), st.integers(0, 3000)), min_size=1, max_size=60
    ),
)
def test_in_any_window_grants_never_exceed_rate_plus_burst(
    rpm: int, tpm: int, burst: float, requests: list[tuple[float, int]]
) -> None:
    """The defining property of a token bucket, checked over every window of grants."""
    limiter = surge.Limiter(rpm=rpm, tpm=tpm, burst=burst)
    grants: list[tuple[float, int]] = []

    async def client(gap: float, tokens: int) -> None:
        await asyncio.sleep(gap)
        permit = await limiter.acquire(tokens)
        grants.append((asyncio.get_running_loop().time(), tokens))
        limiter.release(permit, usage_tokens=tokens)

    async def main() -> None:
        # Clients arrive at staggered times, several at once, with varied weights.
        await asyncio.gather(
            *(client(gap * (i % 7), tokens) for i, (gap, tokens) in enumerate(requests))
        )

    run(main())
    assert len(grants) == len(requests)
    request_rate, token_rate = rpm / 60, tpm / 60
    request_burst, token_burst = max(1.0, request_rate * burst), max(1.0, token_rate * burst)
    largest = max(t for _, t in grants)
    for i in range(len(grants)):
        for j in range(i, len(grants)):
            window = grants[j][0] - grants[i][0]
            count = j - i + 1
            tokens = sum(t for _, t in grants[i : j + 1])
            assert count <= request_burst + request_rate * window + 1e-6
            # An item above the burst waits for a full bucket and then runs it into debt,
            # so the bound allows one such oversize item on top.
            assert (
                tokens <= token_burst + token_rate * window + max(0, largest - token_burst) + 1e-6
            )


def test_waiters_are_woken_by_one_timer_not_polling() -> None:
    limiter = surge.Limiter(rpm=60, burst=1.0)  # one request per second
    scheduled: list[float] = []

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        original = loop.call_at

        def spy(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
            scheduled.append(when)
            return original(when, callback, *args, **kwargs)

        loop.call_at = spy  # type: ignore[method-assign]
        times = []
        for _ in range(5):
            permit = await limiter.acquire()
            times.append(loop.time())
            limiter.release(permit)
        return times

    assert run(main()) == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])
    assert len(scheduled) == 4  # exactly one timer per wait


def test_tpm_bounds_a_gather_to_the_physical_limit() -> None:
    async def call(x: int) -> surge.Reply[int]:
        await asyncio.sleep(0.1)
        return surge.Reply(x, usage=surge.Usage(500, 500))

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await surge.gather(call, range(100), tpm=60_000, tokens=lambda x: 1000)
        return loop.time() - start

    # 100 x 1000 tokens at 1000 tokens/s, minus the 1 s burst, plus the last call's 0.1 s.
    assert run(main()) == pytest.approx(99.1, abs=0.01)


def test_estimates_are_settled_against_real_usage() -> None:
    limiter = surge.Limiter(tpm=6000, burst=1.0)  # 100 tokens/s, capacity 100

    async def main() -> float:
        loop = asyncio.get_running_loop()
        permit = await limiter.acquire(100)
        limiter.release(permit, usage_tokens=10)  # we over-estimated by 90: refunded
        permit = await limiter.acquire(90)
        return loop.time()

    assert run(main()) == pytest.approx(0.0)


def test_unused_max_tokens_stay_counted_on_the_tpm_bucket_as_openai_counts_them() -> None:
    limiter = surge.Limiter(tpm=6000, burst=1.0)  # 100 tokens/s, capacity 100
    estimate = {"tokens": 100, "input_tokens": 10, "output_tokens": 90}  # max_tokens=90

    async def main() -> float:
        loop = asyncio.get_running_loop()
        permit = await limiter.acquire(estimate)
        # A 5-token reply: OpenAI still counted the 90 at admission, and keeps them.
        limiter.release(permit, usage_tokens=13, input_tokens=8, output_tokens=5)
        permit = await limiter.acquire(90)
        return loop.time()

    # Only the input estimate's error (10 - 8) is refunded: 90 - 2 must refill.
    assert run(main()) == pytest.approx(0.88)


def test_pause_holds_every_acquisition() -> None:
    limiter = surge.Limiter(concurrency=10)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        await limiter.acquire()
        limiter.pause(12.5)
        await limiter.acquire()
        return loop.time()

    assert run(main()) == pytest.approx(12.5)


def test_headers_pull_the_bucket_down_when_the_server_has_less_room() -> None:
    limiter = surge.Limiter(rpm=600, burst=5.0)  # 10/s, local capacity 50

    async def main() -> float:
        loop = asyncio.get_running_loop()
        permit = await limiter.acquire()
        # Someone else shares the key: the server has only 2 requests left.
        limiter.release(permit, hints=hints(dimensions={"requests": hint(600, 2, 4.8)}))
        for _ in range(3):
            limiter.release(await limiter.acquire())
        return loop.time()

    assert run(main()) == pytest.approx(0.1)  # 2 immediately, the 3rd after 1/10 s


def test_headers_raise_the_burst_to_what_the_server_allows() -> None:
    limiter = surge.Limiter(rpm=600)  # 1 s of burst until the server says more

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        limiter.release(await limiter.acquire())
        # Server: 99 left, full again in 0.1 s at 600/min -> its burst is 100.
        limiter.release(
            await limiter.acquire(), hints=hints(dimensions={"requests": hint(600, 99, 0.1)})
        )
        for _ in range(99):
            limiter.release(await limiter.acquire())
        [bucket] = limiter.statistics().buckets
        return loop.time(), bucket.capacity

    elapsed, capacity = run(main())
    assert capacity == pytest.approx(100)
    assert elapsed == pytest.approx(0.0)


def test_a_learned_burst_counts_the_requests_already_granted() -> None:
    limiter = surge.Limiter(rpm=600)  # 1 s of burst until the server says more

    async def main() -> float:
        loop = asyncio.get_running_loop()
        first = await limiter.acquire()
        for _ in range(5):
            await limiter.acquire()
        # Server: 99 left, full again in 0.1 s -> its burst is 100, of which the 5 granted
        # after the first will take 5.
        limiter.release(first, hints=hints(dimensions={"requests": hint(600, 99, 0.1)}))
        for _ in range(95):
            await limiter.acquire()
        return loop.time()

    assert run(main()) == pytest.approx(0.1)  # 94 at once, the 95th 1/10 s later


def test_burst_ceiling_and_rate_ceiling_set_by_the_user_hold() -> None:
    limiter = surge.Limiter(rpm=300, max_burst=2.0)

    async def main() -> surge.BucketStatistics:
        permit = await limiter.acquire()
        limiter.release(permit, hints=hints(dimensions={"requests": hint(6000, 900, 1.0)}))
        [bucket] = limiter.statistics().buckets
        return bucket

    bucket = run(main())
    assert bucket.rate_per_minute == pytest.approx(300)  # the user's ceiling, not 6000
    assert bucket.capacity == pytest.approx(10)  # 2 s of 5/s


def test_limits_are_learned_from_headers_when_none_were_given() -> None:
    limiter = surge.Limiter()

    async def main() -> dict[str, float]:
        permit = await limiter.acquire()
        limiter.release(
            permit,
            hints=hints(
                dimensions={"requests": hint(500, 80, 2.4), "tokens": hint(200_000, 30_000, 1.0)}
            ),
        )
        return {b.name: b.rate_per_minute for b in limiter.statistics().buckets}

    assert run(main()) == pytest.approx({"requests": 500, "tokens": 200_000})


def test_adaptive_concurrency_finds_the_capacity_of_a_server() -> None:
    """A server that answers 429 above 12 concurrent calls and slows down above 8."""
    limiter = surge.Limiter(concurrency=64, adaptive=True)
    in_flight = 0
    caps: list[int] = []

    async def call(x: int) -> int:
        nonlocal in_flight
        in_flight += 1
        caps.append(limiter.concurrency_limit or 0)
        try:
            if in_flight > 12:
                await asyncio.sleep(0.05)
                raise surge.RateLimitError("overloaded")
            await asyncio.sleep(1.0 * max(1.0, in_flight / 8))
            return x
        finally:
            in_flight -= 1

    results = run(surge.gather(call, range(600), limiter=limiter, backoff=surge.constant(0.1)))
    assert all(r.ok for r in results)
    late = caps[len(caps) // 2 :]
    assert 4 <= sum(late) / len(late) <= 16
    assert max(caps) < 64


def test_cancelled_waiter_gives_its_place_back() -> None:
    limiter = surge.Limiter(concurrency=1)

    async def main() -> int:
        first = await limiter.acquire()
        waiting = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        limiter.release(first)
        await limiter.acquire()
        return limiter.statistics().in_flight

    assert run(main()) == 1


def test_probe_sends_one_call_alone_until_it_answers() -> None:
    limiter = surge.Limiter(concurrency=10, probe=True)

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        starts: list[float] = []

        async def call() -> None:
            permit = await limiter.acquire()
            starts.append(loop.time())
            await asyncio.sleep(1.0)
            limiter.release(permit)

        await asyncio.gather(*(call() for _ in range(5)))
        return starts

    assert run(main()) == pytest.approx([0.0, 1.0, 1.0, 1.0, 1.0])
    assert limiter.concurrency_limit == 10
