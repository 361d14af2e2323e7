"""The dispatch loop: ordering, streaming, laziness, failure isolation, stopping."""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tests.conftest import Spy

import surge
from surge.testing import run


async def sleep_for(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


def test_gather_returns_results_in_input_order() -> None:
    delays = [5.0, 1.0, 4.0, 2.0, 3.0]
    results = run(surge.gather(sleep_for, delays))
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert results.values() == delays
    assert all(r.ok and r.attempts == 1 for r in results)


def test_as_completed_yields_in_completion_order() -> None:
    async def main() -> list[float]:
        return [r.value async for r in surge.as_completed(sleep_for, [5.0, 1.0, 4.0, 2.0, 3.0])]

    assert run(main()) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_uncapped_calls_overlap_fully_and_cap_of_two_pairs_them() -> None:
    async def timed(**options: Any) -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await surge.gather(sleep_for, [1.0] * 7, **options)
        return loop.time() - start

    assert run(timed()) == pytest.approx(1.0)
    assert run(timed(concurrency=2)) == pytest.approx(4.0)


@pytest.mark.parametrize("cap", [1, 3, 10])
def test_peak_in_flight_never_exceeds_the_cap(spy: Spy, cap: int) -> None:
    rng = random.Random(cap)
    delays = [rng.uniform(0.1, 3.0) for _ in range(200)]
    results = run(surge.gather(spy.wrap(sleep_for), delays, concurrency=cap))
    assert all(r.ok for r in results)
    assert spy.peak == cap


def test_a_shared_limiter_caps_several_runs_together(spy: Spy) -> None:
    limiter = surge.Limiter(concurrency=4)

    async def main() -> None:
        await asyncio.gather(
            surge.gather(spy.wrap(sleep_for), [1.0] * 30, limiter=limiter),
            surge.gather(spy.wrap(sleep_for), [0.5] * 30, limiter=limiter),
        )

    run(main())
    assert spy.peak == 4
    assert limiter.statistics().granted == 60


def test_items_are_pulled_lazily_from_a_generator(spy: Spy) -> None:
    pulled = 0
    max_ahead = 0

    def source() -> Iterator[float]:
        nonlocal pulled, max_ahead
        for _ in range(1000):
            pulled += 1
            max_ahead = max(max_ahead, pulled - len(spy.ends))
            yield 0.5

    async def main() -> int:
        count = 0
        async for r in surge.as_completed(spy.wrap(sleep_for), source(), concurrency=5):
            assert r.ok
            count += 1
        return count

    assert run(main()) == 1000
    # At most the run's window (2 per slot) plus the one item waiting for a permit.
    assert max_ahead <= 2 * 5 + 1


def test_async_iterable_of_unknown_length() -> None:
    async def source() -> AsyncIterator[int]:
        for i in range(25):
            await asyncio.sleep(0.1)
            yield i

    async def double(x: int) -> int:
        await asyncio.sleep(1)
        return 2 * x

    results = run(surge.gather(double, source(), concurrency=4))
    assert results.values() == [2 * i for i in range(25)]


def test_one_failure_never_sinks_the_batch() -> None:
    async def call(x: int) -> int:
        await asyncio.sleep(0.1)
        if x == 3:
            raise ValueError("bad item")
        return x

    results = run(surge.gather(call, range(6), max_retries=3))
    assert [r.status for r in results] == ["ok"] * 3 + ["failed"] + ["ok"] * 2
    failed = results[3]
    assert failed.attempts == 1, "a bug in the call is not worth a retry"
    # The error is what the call raised, as asyncio.gather(return_exceptions=True) has it;
    # surge's classification sits beside it.
    assert type(failed.error) is ValueError and str(failed.error) == "bad item"
    assert isinstance(failed.failure, surge.FatalError) and failed.failure.__cause__ is failed.error
    assert failed.failure.reason == "call_error" and not failed.failure.retryable
    with pytest.raises(surge.FailedResultsError) as info:
        results.raise_for_failures()
    assert [r.index for r in info.value.failures] == [3]
    with pytest.raises(ValueError, match="bad item"):
        failed.unwrap()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_permanent_errors_are_attempted_once(status: int) -> None:
    attempts = 0

    async def call(x: int) -> int:
        nonlocal attempts
        attempts += 1
        raise surge.error_for_status(status)

    [result] = run(surge.gather(call, [1], max_retries=5))
    # 401/403 stop the whole run (a job-level fault, see test_engine_faults.py): the item
    # comes back cancelled, not failed, so a rerun with a good key sends it again.
    expected = "cancelled" if status in (401, 403) else "failed"
    assert attempts == 1 and result.attempts == 1 and result.status == expected


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
def test_transient_errors_are_retried_with_backoff(status: int) -> None:
    times: list[float] = []

    async def call(x: int) -> int:
        times.append(asyncio.get_running_loop().time())
        if len(times) < 4:
            raise surge.error_for_status(status)
        return x

    backoff = surge.exponential(base=1.0, cap=100.0)
    [result] = run(surge.gather(call, [7], max_retries=5, backoff=backoff))
    assert result.ok and result.value == 7 and result.attempts == 4
    assert [round(b - a, 6) for a, b in itertools.pairwise(times)] == [1.0, 2.0, 4.0]


def test_retries_stop_after_max_retries() -> None:
    async def call(x: int) -> int:
        raise ConnectionResetError("reset by peer")

    [result] = run(surge.gather(call, [1], max_retries=2, backoff=surge.constant(0.1)))
    assert result.status == "failed" and result.attempts == 3
    assert type(result.error) is ConnectionResetError
    assert type(result.failure) is surge.TransportError and result.failure.retryable


def test_full_jitter_spreads_retries() -> None:
    wait = surge.full_jitter(base=1.0, cap=8.0)
    rng = random.Random(0)
    samples = [wait(5, rng) for _ in range(2000)]
    assert min(samples) >= 0.0 and max(samples) <= 8.0
    assert 3.5 < sum(samples) / len(samples) < 4.5  # uniform(0, 8) has mean 4
    assert max(wait(1, rng) for _ in range(200)) <= 1.0


def test_retry_after_wins_and_pauses_the_whole_limiter(spy: Spy) -> None:
    rejected = False

    async def call(x: int) -> int:
        nonlocal rejected
        await asyncio.sleep(0.01)
        if x == 0 and not rejected:
            rejected = True
            raise surge.RateLimitError("slow down", retry_after=7.0)
        return x

    results = run(
        surge.gather(spy.wrap(call), range(10), concurrency=1, backoff=surge.constant(0.5))
    )
    assert all(r.ok for r in results)
    starts = [t for t, _ in spy.starts]
    # item 0 failed at ~0.01 s; nothing at all started until its Retry-After ran out.
    assert starts[1] >= 7.0
    assert results[0].attempts == 2


def test_per_attempt_timeout_is_retryable() -> None:
    async def call(x: int) -> int:
        await asyncio.sleep(10)
        return x

    async def main() -> tuple[surge.Results[int], float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        results = await surge.gather(
            call, [1], timeout=1.0, max_retries=2, backoff=surge.constant(0.5)
        )
        return results, loop.time() - start

    [result], elapsed = run(main())
    assert result.status == "failed" and result.attempts == 3
    # surge cut the attempt short: the error is surge's own reason.
    assert isinstance(result.error, surge.AttemptTimeout) and result.failure is result.error
    assert elapsed == pytest.approx(3 * 1.0 + 2 * 0.5)


def test_deadline_cancels_in_flight_and_reports_unstarted() -> None:
    results = run(
        surge.gather(sleep_for, [1.0, 1.0, 10.0, 10.0, 1.0, 1.0], concurrency=4, deadline=5.0)
    )
    assert [r.status for r in results] == ["ok", "ok", "cancelled", "cancelled", "ok", "ok"]
    results = run(surge.gather(sleep_for, [10.0] * 5, concurrency=2, deadline=5.0))
    assert [r.status for r in results] == ["cancelled"] * 2 + ["not_started"] * 3
    assert isinstance(results[0].error, surge.DeadlineExceeded)


def test_max_failures_stops_dispatch() -> None:
    async def call(x: int) -> int:
        await asyncio.sleep(1)
        raise surge.BadRequestError("no")

    async def main() -> tuple[surge.Results[int], surge.RunStatistics]:
        stream = surge.as_completed(call, range(100), concurrency=2, max_failures=3)
        seen = [r async for r in stream]
        return surge.Results(sorted(seen, key=lambda r: r.index)), stream.statistics()

    results, stats = run(main())
    assert len(results) == 100
    assert stats.failed == 4  # 3 triggered the stop; the 4th was already in flight
    assert stats.not_started == 96 and stats.stopped == "max_failures"
    assert {r.status for r in results[4:]} == {"not_started"}


def test_stop_when_predicate() -> None:
    results = run(
        surge.gather(sleep_for, [1.0] * 20, concurrency=1, stop_when=lambda r: r.index == 4)
    )
    assert [r.status for r in results[:5]] == ["ok"] * 5
    assert {r.status for r in results[5:]} == {"not_started"}


def test_token_budget_counts_spent_and_reserved() -> None:
    async def call(x: int) -> surge.Reply[int]:
        await asyncio.sleep(1)
        return surge.Reply(x, usage=surge.Usage(60, 40))

    results = run(
        surge.gather(call, range(10), concurrency=2, tokens=lambda x: 100, token_budget=450)
    )
    assert [r.status for r in results].count("ok") == 4
    assert results.usage().total_tokens == 400
    assert {r.status for r in results[4:]} == {"not_started"}


def test_usage_is_read_from_openai_and_anthropic_shaped_values() -> None:
    async def call(kind: str) -> Any:
        if kind == "openai":
            return {"usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}
        return {"usage": {"input_tokens": 7, "output_tokens": 11}}

    results = run(surge.gather(call, ["openai", "anthropic"]))
    assert results[0].usage == surge.Usage(3, 5)
    assert results[1].usage == surge.Usage(7, 11)


def test_events_and_statistics_tell_the_same_story() -> None:
    events: list[surge.Event] = []
    failures = {0: 2, 1: 1}

    async def call(x: int) -> int:
        await asyncio.sleep(1)
        if failures.get(x, 0):
            failures[x] -= 1
            raise surge.ServerError("boom", status_code=503)
        return x

    async def main() -> surge.RunStatistics:
        stream = surge.as_completed(
            call, range(5), on_event=events.append, backoff=surge.constant(1)
        )
        async for _ in stream:
            pass
        return stream.statistics()

    stats = run(main())
    kinds = [e.kind for e in events]
    assert kinds.count("start") == 5 and kinds.count("retry") == 3 and kinds.count("done") == 5
    assert stats.succeeded == 5 and stats.retries == 3 and stats.attempts == 8
    assert stats.in_flight == 0 and stats.elapsed == pytest.approx(5.0)


def test_a_broken_event_hook_does_not_sink_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    def hook(event: surge.Event) -> None:
        raise RuntimeError("progress bar bug")

    results = run(surge.gather(sleep_for, [1.0, 2.0], on_event=hook))
    assert all(r.ok for r in results)
    assert "on_event hook raised" in caplog.text


def test_cancelling_gather_cancels_in_flight_calls_cleanly(spy: Spy) -> None:
    cancelled: list[int] = []

    async def call(x: int) -> int:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    async def main() -> None:
        task = asyncio.ensure_future(surge.gather(call, range(50), concurrency=5))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert others == [], f"tasks left behind: {others}"

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(main())
        gc.collect()
    assert sorted(cancelled) == [0, 1, 2, 3, 4]


def test_breaking_out_of_as_completed_cancels_the_rest() -> None:
    cancelled = 0

    async def call(x: float) -> float:
        nonlocal cancelled
        try:
            await asyncio.sleep(x)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return x

    async def main() -> float:
        async with surge.as_completed(call, [3.0, 1.0, 2.0, 4.0], concurrency=3) as results:
            async for r in results:
                assert r.value is not None
                return r.value
        raise AssertionError("no result")

    assert run(main()) == 1.0
    assert cancelled == 2


def test_map_from_a_plain_script() -> None:
    async def call(x: int) -> int:
        await asyncio.sleep(0.001)
        return x * x

    assert surge.map(call, range(5), concurrency=2).values() == [0, 1, 4, 9, 16]


def test_map_inside_a_running_loop() -> None:
    async def call(x: int) -> int:
        await asyncio.sleep(0.001)
        return x + 1

    async def notebook_cell() -> list[int | None]:
        return surge.map(call, range(3)).values()

    assert asyncio.run(notebook_cell()) == [1, 2, 3]


def test_sync_functions_are_accepted() -> None:
    results = run(surge.gather(lambda x: x * 3, range(4)))
    assert results.values() == [0, 3, 6, 9]


def test_helpful_errors_at_the_door() -> None:
    with pytest.raises(TypeError, match="unknown option"):
        surge.as_completed(sleep_for, [], concurency=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="HINT"):
        surge.as_completed(sleep_for, [], limiter=surge.Limiter(), rpm=10)
    coroutine = sleep_for(1.0)
    with pytest.raises(TypeError, match="HINT"):
        surge.as_completed(coroutine, [])  # type: ignore[arg-type]
    coroutine.close()
    with pytest.raises(ValueError, match="max_retries"):
        surge.as_completed(sleep_for, [], max_retries=-1)
    with pytest.raises(ValueError, match="HINT"):
        surge.Limiter(adaptive=True)
