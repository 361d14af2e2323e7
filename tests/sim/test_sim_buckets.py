"""Token buckets on an explicit clock: admission, refusal, Retry-After, debt."""

from __future__ import annotations

import copy

from hypothesis import given
from hypothesis import strategies as st

from surge.sim._limits import Bucket, Limiter


def test_bucket_starts_full_and_refills_at_limit_per_minute() -> None:
    bucket = Bucket(600, 10.0, now=0.0)  # 10/s, holds 100
    assert bucket.capacity == 100 and bucket.remaining == 100
    bucket.level -= 100
    bucket.refill(1.0)
    assert bucket.remaining == 10
    assert abs(bucket.reset_in - 9.0) < 1e-9
    bucket.refill(100.0)
    assert bucket.remaining == 100  # never above capacity


def test_refused_request_takes_nothing_and_waits_exactly_long_enough() -> None:
    limiter = Limiter({"requests": 60, "tokens": 600}, burst_seconds=2.0)  # 2 req, 20 tok
    _, wait, kind = limiter.admit("k", {"requests": 1, "tokens": 15}, 0.0)
    assert (wait, kind) == (0.0, None)
    buckets, wait, kind = limiter.admit("k", {"requests": 1, "tokens": 15}, 0.0)
    assert kind == "tokens" and abs(wait - 1.0) < 1e-9  # 5 left, needs 10 more at 10/s
    assert buckets["requests"].remaining == 1 and buckets["tokens"].remaining == 5
    assert limiter.admit("k", {"requests": 1, "tokens": 15}, 0.999)[2] == "tokens"
    assert limiter.admit("k", {"requests": 1, "tokens": 15}, 1.0)[2] is None
    assert limiter.admit("other", {"requests": 1, "tokens": 15}, 1.0)[2] is None  # per key


def test_request_larger_than_the_bucket_waits_for_a_full_bucket_then_goes_into_debt() -> None:
    limiter = Limiter({"tokens": 60}, burst_seconds=10.0)  # 1/s, holds 10
    assert limiter.admit("k", {"tokens": 25}, 0.0)[2] is None
    buckets, wait, kind = limiter.admit("k", {"tokens": 25}, 0.0)
    assert kind == "tokens" and abs(wait - 25.0) < 1e-9  # from -15 back to full
    assert buckets["tokens"].remaining == 0


@given(st.lists(st.tuples(st.floats(0, 2), st.integers(1, 30)), max_size=60))
def test_admitted_tokens_never_exceed_burst_plus_rate_times_time(
    steps: list[tuple[float, int]],
) -> None:
    limiter = Limiter({"tokens": 600}, burst_seconds=3.0)  # 10/s, holds 30
    now, admitted = 0.0, 0
    for dt, cost in steps:
        now += dt
        _, wait, kind = limiter.admit("k", {"tokens": cost}, now)
        if kind is None:
            admitted += cost
        else:
            assert wait > 0
            # Waiting the announced time is always enough, and not a millisecond less.
            assert copy.deepcopy(limiter).admit("k", {"tokens": cost}, now + wait)[2] is None
            if wait > 0.002:
                later = now + wait - 0.001
                assert copy.deepcopy(limiter).admit("k", {"tokens": cost}, later)[2] == "tokens"
    assert admitted <= 30 + 10 * now + 1e-6
