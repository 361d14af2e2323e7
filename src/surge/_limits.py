"""Limits: a concurrency cap, weighted token buckets for RPM/TPM, and AIMD concurrency.

One `Limiter` stands for one provider key. Share it between calls, clients and
`gather`s in one event loop: the provider counts per key, not per call site.

Token buckets are continuous (GCRA-like: https://en.wikipedia.org/wiki/Generic_cell_rate_algorithm):
a level that refills at `rate` per second up to `capacity`. Waiters queue first-in,
first-out and are woken by a single `loop.call_at` timer set for the exact moment the
head of the queue can be served; nothing polls. Capacity is the burst: it starts at
`burst` seconds of rate, a bound well inside the 1-10 s windows providers enforce their
per-minute limits over, and follows the burst the server reports in its headers.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from surge._feedback import RateLimitHints

if TYPE_CHECKING:
    from surge._shared import LeaseClient

Outcome = Literal["ok", "rate_limited", "error", "cancelled"]
Estimate = float | Mapping[str, float]
"""A call's token cost: one number (for a TPM bucket), or per dimension: "tokens",
"input_tokens", "output_tokens" (Anthropic counts input and output separately)."""

# What a permit granted before the limiter knew any rate still owes, once it learns one:
# the request itself (tokens are settled against real usage when the call ends).
_REQUEST_ONLY: Mapping[str, float] = {"tokens": 0.0, "input_tokens": 0.0, "output_tokens": 0.0}

# Timers may fire a hair early (loop clock resolution) and float sums drift; a wait this
# short counts as no wait, so a timer never re-arms itself in a tight loop.
_EPSILON = 1e-9
_NUMBERS = (int, float)
# What a grant took from each bucket, and each bucket's (`taken`, time) just after it.
_Taken = tuple[dict[str, float], dict[str, tuple[float, float]]]


class TokenBucket:
    """A weighted token bucket. Pure arithmetic on times passed in; it owns no timer."""

    __slots__ = ("_level", "_updated", "capacity", "name", "rate", "taken")

    def __init__(self, name: str, *, rate: float, capacity: float, now: float) -> None:
        if rate <= 0:
            raise ValueError(f"{name}: rate must be > 0, got {rate}")
        self.name = name
        self.rate = rate
        self.capacity = max(1.0, capacity)
        self._level = self.capacity
        self._updated = now
        self.taken = 0.0  # net of all charges and refunds: marks what a permit came after

    def level(self, now: float) -> float:
        elapsed = now - self._updated
        if elapsed <= 0:
            return min(self.capacity, self._level)
        return min(self.capacity, self._level + elapsed * self.rate)

    def delay(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken. Amounts above capacity wait for a full
        bucket and then drive the level negative, so the long-run rate still holds."""
        missing = min(amount, self.capacity) - self.level(now)
        return 0.0 if missing <= _EPSILON else missing / self.rate

    def give(self, amount: float, now: float) -> None:
        """Return (or, if negative, charge) tokens: settling an estimate against real usage."""
        self._level = min(self.capacity, self.level(now) + amount)
        self.taken -= amount
        self._updated = now

    def set_level(self, level: float, now: float) -> None:
        self._level = min(self.capacity, level)
        self._updated = now


@dataclass(frozen=True, slots=True)
class BucketStatistics:
    name: str
    rate_per_minute: float
    capacity: float
    level: float


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    concurrency_limit: int | None
    """Current cap on calls in flight (moves under adaptive concurrency)."""
    in_flight: int
    waiting: int
    """Acquisitions queued for a slot or for rate."""
    granted: int
    rate_limited: int
    """429s reported back to this limiter."""
    paused_for: float
    """Seconds left of a provider-ordered pause (Retry-After)."""
    buckets: tuple[BucketStatistics, ...]


@dataclass(slots=True)
class Permit:
    """Permission for one attempt: a concurrency slot plus what it reserved per bucket."""

    granted_at: float
    reserved: dict[str, float] = field(default_factory=dict)
    # Per bucket whose burst is not known yet: (its `taken` just after this permit's
    # share, the time), so the answer that reveals the burst can be read against what
    # was granted since (see `_room_left`).
    marks: dict[str, tuple[float, float]] = field(default_factory=dict)
    released: bool = False
    # The output the estimate reserved (max_tokens): OpenAI's TPM counts it when it admits
    # the request, however short the reply turns out (see `Limiter.release`).
    output_ceiling: float = 0.0


class _Aimd:
    """Additive-increase / multiplicative-decrease on the concurrency cap, as TCP does on
    its congestion window (RFC 5681): slow start doubles per round trip until the first
    sign of congestion, then +1 per round trip. A 429 halves the cap; latency cuts it by
    10 % when its moving average passes `latency_tolerance` times the lowest average seen
    (single calls vary with their output length, so only the average is a signal). At
    most one cut per round trip: calls started before the last cut carry no news."""

    _SMOOTHING = 0.1  # weight of a new sample in the latency average
    _WARMUP = 10  # samples before the average counts as a baseline

    def __init__(self, *, initial: float, ceiling: float, floor: float = 1.0) -> None:
        self.limit = initial
        self.ceiling = ceiling
        self.floor = floor
        self.slow_start = True
        self.latency_tolerance = 2.0
        self._average: float | None = None
        self._samples = 0
        self._baseline = math.inf
        self._last_cut = -math.inf

    def on_result(
        self, outcome: Outcome, latency: float | None, started: float, now: float
    ) -> None:
        if outcome == "cancelled":
            return
        slow = False
        if latency is not None and outcome == "ok":
            if self._average is None:
                self._average = latency
            else:
                self._average += self._SMOOTHING * (latency - self._average)
            self._samples += 1
            if self._samples >= self._WARMUP:
                self._baseline = min(self._baseline, self._average)
                slow = self._average > self.latency_tolerance * self._baseline
        if outcome == "rate_limited" or slow:
            if started >= self._last_cut:
                self.limit = max(
                    self.floor, self.limit * (0.5 if outcome == "rate_limited" else 0.9)
                )
                self.slow_start = False
                self._last_cut = now
        elif outcome == "ok":
            step = 1.0 if self.slow_start else 1.0 / self.limit
            self.limit = min(self.ceiling, self.limit + step)


class Limiter:
    """Concurrency cap + RPM bucket + TPM bucket for one provider key.

    >>> limiter = surge.Limiter(concurrency=50, rpm=500, tpm=200_000)
    >>> await surge.gather(call, prompts, limiter=limiter, tokens=estimate)

    - `concurrency`: most calls in flight at once (the ceiling, when `adaptive=True`).
    - `rpm`, `tpm`: per-minute limits. Without them, the limiter adopts whatever the
      provider publishes in `x-ratelimit-*` / `anthropic-ratelimit-*` headers: those of
      every response a `surge.wire`d client receives, or those a call hands back
      (an `httpx.Response`, a `surge.Reply`).
    - `itpm`, `otpm`: Anthropic-style input- and output-token limits. Output tokens are
      only known once a call ends, so these buckets are charged with real usage after
      the fact and hold new calls back while they are in debt.
    - `burst`: seconds of rate the buckets may spend at once before the server has
      said how much it allows.
    - `max_burst`: seconds of rate the buckets may grow to when the server reports a
      larger burst; None trusts the server.
    - `adaptive`: grow and shrink the concurrency cap (AIMD) from 429s and latency, for
      endpoints that publish no limits, such as a self-hosted vLLM server.
    - `follow_headers`: keep the buckets in step with the server's own count.
    - `probe`: send one call alone first and open up only once it has answered, so a
      job that was given no limits learns them from the headers before it bursts
      (costs one call's latency; `surge run` does this when given no --rpm/--tpm).
    - `shared`, `key`: share the limit with every process that names the same key in
      the same store: `shared="redis://host:6379/0"`, or `"ray"` for a named actor in
      the Ray cluster. Each process leases small slices of the budget, so the store is
      off the per-request path; headers, 429s and Retry-After seen by any process
      correct it for all (see `surge._shared`).
    """

    def __init__(
        self,
        *,
        concurrency: int | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        itpm: float | None = None,
        otpm: float | None = None,
        burst: float = 1.0,
        max_burst: float | None = None,
        adaptive: bool = False,
        follow_headers: bool = True,
        probe: bool = False,
        shared: object = None,
        key: str | None = None,
    ) -> None:
        _check_positive("concurrency", concurrency)
        _check_positive("rpm", rpm)
        _check_positive("tpm", tpm)
        _check_positive("itpm", itpm)
        _check_positive("otpm", otpm)
        _check_positive("burst", burst)
        _check_positive("max_burst", max_burst)
        if adaptive and concurrency is None:
            raise ValueError(
                "adaptive=True needs a ceiling. HINT: pass concurrency=N, the most calls "
                "in flight you would ever allow; the limiter finds the best cap below it."
            )
        self._user_rate = {
            "requests": rpm,
            "tokens": tpm,
            "input_tokens": itpm,
            "output_tokens": otpm,
        }
        self._burst = burst
        self._max_burst = max_burst
        self._follow_headers = follow_headers
        self._probing = probe
        self._aimd = (
            _Aimd(initial=min(float(concurrency), 4.0), ceiling=float(concurrency))
            if adaptive and concurrency is not None
            else None
        )
        self._concurrency = concurrency
        self._in_flight = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._rate_waiters: deque[tuple[Estimate, asyncio.Future[_Taken]]] = deque()
        self._buckets: dict[str, TokenBucket] = {}
        self._burst_learned: set[str] = set()
        self._expected: dict[str, float] = {}  # moving average of input/output usage per call
        self._paused_until = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._granted = 0
        self._rate_limited = 0
        # Wired HTTP clients (surge.wire): until the first answer, one request goes alone.
        self._answered = False
        self._first_request_out = False
        self._first_answer_waiters: list[asyncio.Future[None]] = []
        self._shared: LeaseClient | None = None
        if shared is not None:
            from surge._shared import connect

            self._shared = connect(shared, key)
        elif key is not None:
            raise ValueError(
                "key= names a shared limit and needs shared=. HINT: "
                "surge.Limiter(rpm=..., shared='redis://host:6379/0', key=...)."
            )

    # -- acquiring -------------------------------------------------------------------

    def try_acquire(self, tokens: Estimate = 0) -> Permit | None:
        """A permit now, if a slot and the rate allow it without waiting; else None.

        Never jumps the queue: with anyone waiting, it answers None.
        """
        loop = self._bind()
        if self._slot_waiters or self._rate_waiters:
            return None
        limit = self.concurrency_limit
        if limit is not None and self._in_flight >= limit:
            return None
        now = loop.time()
        delay, amounts = self._plan(tokens, now)
        if delay > 0.0:
            return None
        reserved, marks = self._take(amounts, now)
        self._in_flight += 1
        self._granted += 1
        return Permit(now, reserved, marks, output_ceiling=_output_part(tokens))

    async def acquire(self, tokens: Estimate = 0) -> Permit:
        """Wait for a concurrency slot, then for rate; return the permit to `release`."""
        permit = self.try_acquire(tokens)
        if permit is not None:
            return permit
        loop = self._bind()
        await self._acquire_slot(loop)
        try:
            reserved, marks = await self._acquire_rate(loop, tokens)
        except BaseException:
            self._release_slot()
            raise
        self._granted += 1
        return Permit(loop.time(), reserved, marks, output_ceiling=_output_part(tokens))

    def release(
        self,
        permit: Permit,
        *,
        outcome: Outcome = "ok",
        usage_tokens: float | None = None,
        input_tokens: float | None = None,
        output_tokens: float | None = None,
        latency: float | None = None,
        hints: RateLimitHints | None = None,
    ) -> None:
        """Hand the slot back and settle: refund or charge the difference between the
        reserved tokens and what the call really used (all of it if it failed before the
        provider counted anything), charge input/output token buckets with the real
        usage, then learn from the provider's headers. On the all-tokens (OpenAI TPM)
        bucket an answer keeps the estimate's `output_tokens` (its max_tokens) counted
        even if the reply was shorter: OpenAI counts max_tokens when it admits a request
        (its rate-limit guide; it documents no refund, and the simulator gives none), so
        giving it back would send more than the key allows and cost 429s. Anthropic's
        OTPM does settle to the real output: that is its own bucket."""
        if permit.released:
            return
        permit.released = True
        now = self._now()
        for name, bucket in self._buckets.items():
            if name == "requests":
                continue
            reserved = permit.reserved.get(name, 0.0)
            if name == "tokens":
                used = usage_tokens or 0.0
                if output_tokens is not None:  # the unused max_tokens stay counted
                    used += max(0.0, permit.output_ceiling - output_tokens)
            else:  # input_tokens / output_tokens
                actual = input_tokens if name == "input_tokens" else output_tokens
                if actual is not None:
                    used = actual
                    previous = self._expected.get(name)
                    self._expected[name] = (
                        actual if previous is None else previous + 0.2 * (actual - previous)
                    )
                else:  # succeeded with usage unknown: keep the reservation
                    used = reserved if outcome == "ok" else 0.0
            if reserved != used:
                bucket.give(reserved - used, now)
        if outcome == "rate_limited":
            self._rate_limited += 1
        if self._aimd is not None:
            self._aimd.on_result(outcome, latency, permit.granted_at, now)
        if hints:
            self.observe(hints, permit)
        if outcome != "cancelled":
            self._probing = False
        self._release_slot()
        if self._rate_waiters:
            self._schedule()

    async def admit_request(self, permit: Permit) -> float:
        """Called by a wired HTTP client (`surge.wire`) as a request goes out; returns the
        seconds it waited.

        A limiter told no rate knows nothing until the provider answers, so the first
        request goes alone and the rest wait for its headers, instead of all bursting
        into a limit nobody has seen yet. A permit granted before a rate was known then
        pays for its request in the newly learned bucket.
        """
        learning = not self._answered and not self._buckets
        if not learning and ("requests" not in self._buckets or "requests" in permit.reserved):
            return 0.0  # the common case: nothing to wait for
        loop = self._bind()
        start = loop.time()
        while not self._answered and not self._buckets:
            if not self._first_request_out:
                self._first_request_out = True
                break
            waiter: asyncio.Future[None] = loop.create_future()
            self._first_answer_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._first_answer_waiters:
                    self._first_answer_waiters.remove(waiter)
        if "requests" in self._buckets and "requests" not in permit.reserved:
            reserved, marks = await self._acquire_rate(loop, _REQUEST_ONLY)
            permit.reserved.update(reserved)
            permit.marks.update(marks)
        return loop.time() - start

    @property
    def learning(self) -> bool:
        """True until a wired client's first answer: the limiter has no rate and the
        provider has not said what it allows (see `admit_request`)."""
        return not self._answered and not self._buckets

    def request_answered(self, hints: RateLimitHints | None, permit: Permit | None = None) -> None:
        """A wired HTTP client got an answer (any status) to the request `permit` let go:
        learn from its headers and let the requests held back by `admit_request` go."""
        if hints:
            self.observe(hints, permit)
        self._answered = True
        self._wake_first_answer_waiters()

    def request_failed(self) -> None:
        """A wired request got no answer at all: let the next waiter try in its place."""
        self._first_request_out = False
        self._wake_first_answer_waiters()

    def _wake_first_answer_waiters(self) -> None:
        waiters, self._first_answer_waiters = self._first_answer_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def aclose(self) -> None:
        """Give back what this limiter holds of a shared limit (`shared=`), so the other
        processes need not wait for its leases to expire. Nothing to do otherwise."""
        if self._shared is not None:
            await self._shared.aclose()

    def pause(self, seconds: float) -> None:
        """Grant nothing for `seconds`: the provider's Retry-After applies to the key."""
        if seconds <= 0:
            return
        if self._shared is not None:
            self._shared.pause(seconds)
        self._hold(seconds)

    def _hold(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._now() + seconds)
        self._schedule()

    def observe(self, hints: RateLimitHints, permit: Permit | None = None) -> None:
        """Keep the buckets in step with the server's own count (x-ratelimit-* headers).

        Down when the server has less room than we thought; up to the burst it says it
        allows, never above a rate or burst ceiling the user set. `permit` is the one the
        answered request went out on, when known: when its answer first reveals the
        burst, what was granted after it is taken off the server's count too.
        """
        if hints.retry_after is not None:
            self.pause(hints.retry_after)
        if not self._follow_headers:
            return
        now = self._now()
        for name, hint in hints.dimensions.items():
            if name not in self._user_rate:
                continue
            user_rate = self._user_rate[name]
            bucket = self._buckets.get(name)
            if hint.limit is not None and hint.limit > 0:
                server_rate = hint.limit / 60.0
                rate = server_rate if user_rate is None else min(user_rate / 60.0, server_rate)
                if bucket is None:
                    bucket = self._make_bucket(name, rate, now)
                bucket.rate = rate
            if bucket is None:
                continue
            server_burst = hint.server_burst()
            learned_burst = False
            if server_burst is not None:
                ceiling = math.inf if self._max_burst is None else self._max_burst * bucket.rate
                learned_burst = name not in self._burst_learned
                self._burst_learned.add(name)
                bucket.capacity = max(1.0, min(server_burst, ceiling))
            # Headers lag: requests granted since the server wrote them are not in
            # `remaining` yet. So the level only ever follows them down, except once,
            # when the server first reveals its burst and the room we were not using.
            if hint.remaining is None:
                continue
            if learned_burst:
                bucket.set_level(_room_left(bucket, hint.remaining, permit, now), now)
            elif hint.remaining < bucket.level(now):
                bucket.set_level(hint.remaining, now)
        if self._shared is not None:
            self._shared.sync()
        self._schedule()

    # -- introspection ---------------------------------------------------------------

    @property
    def max_concurrency(self) -> int | None:
        """The configured cap (the ceiling, under adaptive concurrency)."""
        return self._concurrency

    @property
    def concurrency_limit(self) -> int | None:
        if self._probing:
            return 1
        if self._aimd is not None:
            return max(1, int(self._aimd.limit))
        return self._concurrency

    def statistics(self) -> LimiterStatistics:
        # Readable from anywhere, even after the loop has finished.
        now = self._loop.time() if self._loop is not None else 0.0
        return LimiterStatistics(
            concurrency_limit=self.concurrency_limit,
            in_flight=self._in_flight,
            waiting=len(self._slot_waiters) + len(self._rate_waiters),
            granted=self._granted,
            rate_limited=self._rate_limited,
            paused_for=max(0.0, self._paused_until - now),
            buckets=tuple(
                BucketStatistics(b.name, b.rate * 60.0, b.capacity, b.level(now))
                for b in self._buckets.values()
            ),
        )

    # -- internals -------------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return loop
        if self._loop is None:
            self._loop = loop
            now = loop.time()
            for name, per_minute in self._user_rate.items():
                if per_minute is not None:
                    self._make_bucket(name, per_minute / 60.0, now)
            if self._shared is not None:
                self._shared.attach(loop, wake=self._schedule, hold=self._hold, adopt=self._adopt)
        elif self._loop is not loop:
            raise RuntimeError(
                "This Limiter is already used by another event loop. HINT: a limiter "
                "belongs to one event loop; create one per loop (surge.map runs on surge's "
                "own background loop, not on the loop `await surge.gather` runs on)."
            )
        return loop

    def _now(self) -> float:
        return self._bind().time()

    def _make_bucket(self, name: str, rate: float, now: float) -> TokenBucket:
        if self._shared is not None:
            bucket: TokenBucket = self._shared.bucket(name, rate=rate, capacity=rate * self._burst)
        else:
            bucket = TokenBucket(name, rate=rate, capacity=rate * self._burst, now=now)
        self._buckets[name] = bucket
        return bucket

    def _adopt(self, name: str, rate: float, capacity: float) -> None:
        """Another process sharing the key learned a limit from the provider: use it."""
        if name in self._user_rate and name not in self._buckets and rate > 0:
            self._make_bucket(name, rate, self._now()).capacity = max(1.0, capacity)

    async def _acquire_slot(self, loop: asyncio.AbstractEventLoop) -> None:
        limit = self.concurrency_limit
        if limit is None or (self._in_flight < limit and not self._slot_waiters):
            self._in_flight += 1
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # granted as we were cancelled: pass it on
            else:
                self._slot_waiters.remove(waiter)
            raise

    def _release_slot(self) -> None:
        self._in_flight -= 1
        limit = self.concurrency_limit
        while self._slot_waiters and (limit is None or self._in_flight < limit):
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(None)

    async def _acquire_rate(self, loop: asyncio.AbstractEventLoop, tokens: Estimate) -> _Taken:
        now = loop.time()
        if not self._rate_waiters:
            delay, amounts = self._plan(tokens, now)
            if delay == 0.0:
                return self._take(amounts, now)
        waiter: asyncio.Future[_Taken] = loop.create_future()
        self._rate_waiters.append((tokens, waiter))
        self._schedule()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._refund(waiter.result()[0])
            else:
                self._rate_waiters = deque(w for w in self._rate_waiters if w[1] is not waiter)
                self._schedule()
            raise

    def _plan(self, tokens: Estimate, now: float) -> tuple[float, dict[str, float]]:
        """(Seconds until a call of this cost may start, what it takes from each bucket):
        one request, the caller's token estimate, or, for an input/output bucket the
        estimate does not cover, the usage calls have had on average."""
        delay = self._paused_until - now
        amounts: dict[str, float] = {}
        for name, bucket in self._buckets.items():
            if name == "requests":
                amount = 1.0
            elif name == "tokens":
                amount = total_tokens(tokens)
            elif type(tokens) not in _NUMBERS and isinstance(tokens, Mapping) and name in tokens:
                amount = float(tokens[name])
            else:
                amount = min(self._expected.get(name, 0.0), bucket.capacity)
            wait = bucket.delay(amount, now)
            if wait > delay:
                delay = wait
            if amount:
                amounts[name] = amount
        return (0.0 if delay <= _EPSILON else delay), amounts

    def _take(self, amounts: dict[str, float], now: float) -> _Taken:
        marks = {}
        for name, amount in amounts.items():
            bucket = self._buckets[name]
            bucket.give(-amount, now)
            if self._follow_headers and name not in self._burst_learned:
                marks[name] = (bucket.taken, now)
        return amounts, marks

    def _refund(self, reserved: dict[str, float]) -> None:
        now = self._now()
        for name, amount in reserved.items():
            bucket = self._buckets.get(name)
            if bucket is not None:
                bucket.give(amount, now)
        self._schedule()

    def _schedule(self) -> None:
        """Serve the rate queue's head while it fits; else arm one timer for when it will."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._rate_waiters or self._loop is None:
            return
        now = self._loop.time()
        while self._rate_waiters:
            tokens, waiter = self._rate_waiters[0]
            if waiter.done():
                self._rate_waiters.popleft()
                continue
            delay, amounts = self._plan(tokens, now)
            if delay > 0.0:
                self._timer = self._loop.call_at(now + delay, self._schedule)
                return
            self._rate_waiters.popleft()
            waiter.set_result(self._take(amounts, now))


def _room_left(bucket: TokenBucket, remaining: float, permit: Permit | None, now: float) -> float:
    """The room the server has now, read off `remaining` in the headers of the answer to
    the request that `permit` let go, when the server first reveals its burst.

    The server wrote `remaining` when that request reached it; what this limiter granted
    after it had mostly not arrived yet, so it is taken off, less what refilled since
    the request was granted (capped at the burst: a full bucket wastes its refill).

    Only used once per bucket: on every later answer, the grants since it include some
    that reached the server before it (in `remaining` already) whenever requests sent
    together arrive out of order, and taking them off again held a binding run ~3 %
    below the limit (`benchmarks/rate_limit.py`). Later answers only pull the level down
    to `remaining`, which costs a few 429s when requests reach the server late.
    """
    mark = permit.marks.get(bucket.name) if permit is not None else None
    if mark is None:
        return remaining
    taken_then, granted_at = mark
    refilled = min(bucket.capacity, remaining + (now - granted_at) * bucket.rate)
    return min(remaining, refilled - (bucket.taken - taken_then))


def _output_part(estimate: Estimate) -> float:
    if type(estimate) in _NUMBERS or not isinstance(estimate, Mapping):
        return 0.0
    return float(estimate.get("output_tokens", 0.0))


def total_tokens(estimate: Estimate) -> float:
    """All the tokens an estimate stands for (what a single TPM bucket counts)."""
    if type(estimate) in _NUMBERS or not isinstance(estimate, Mapping):  # fast path first
        return float(estimate)  # type: ignore[arg-type]
    if "tokens" in estimate:
        return float(estimate["tokens"])
    return float(estimate.get("input_tokens", 0.0) + estimate.get("output_tokens", 0.0))


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be a positive number or None, got {value!r}")
