"""A worker's side of the shared budget: leases held locally, spent call by call.

`LeaseClient` belongs to one `Limiter` and talks to the store; each of the limiter's
buckets is a `LeasedBucket`, which the limiter uses exactly like its own `TokenBucket`
(level, delay, give, set_level) except that the level is what this worker holds in
leases, not what time has refilled. Spending never touches the store: the client
exchanges with the store in the background when the held balance runs low, when a call
needs more than is held, and when the provider's headers or a Retry-After carry news
for everyone. One exchange at a time per client; when it is answered the limiter is
woken (one timer, as for local buckets; nothing polls).
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from surge._limits import TokenBucket

logger = logging.getLogger("surge")

Message = dict[str, Any]

# A lease lasts this long unless given back: what a dead worker can keep from the rest.
DEFAULT_TTL = 3.0
# A lease is this many seconds of rate; a held balance under a quarter of it fetches the
# next one ahead of need, so a busy worker rarely waits on the store.
DEFAULT_LEASE_SECONDS = 0.2
# While waiting on the store, the limiter re-plans at least this often (a safety net:
# the answer itself wakes it).
_RECHECK = 1.0
# After a failed exchange, try again after this long (doubling, up to 2 s).
_RETRY_FIRST = 0.05
_RETRY_MAX = 2.0


class LeaseStore(Protocol):
    """Where the shared state lives: one atomic `exchange` per call (see `_ledger`)."""

    async def exchange(self, key: str, request: Message) -> Message: ...


@dataclass(slots=True)
class _Lease:
    lease_id: str
    expires_at: float
    remaining: dict[str, float] = field(default_factory=dict)


class LeasedBucket(TokenBucket):
    """A bucket whose level is the leases this worker holds for one dimension."""

    __slots__ = ("_client",)

    def __init__(self, client: LeaseClient, name: str, *, rate: float, capacity: float) -> None:
        super().__init__(name, rate=rate, capacity=capacity, now=0.0)
        self._client = client

    def level(self, now: float) -> float:
        return self._client.held(self.name, now)

    def delay(self, amount: float, now: float) -> float:
        missing = min(amount, self.capacity) - self.level(now)
        if missing <= 1e-9:
            return 0.0
        return self._client.short(self.name, missing, now)

    def give(self, amount: float, now: float) -> None:
        self._client.give(self.name, amount, now)
        self.taken -= amount

    def set_level(self, level: float, now: float) -> None:
        # The provider says this much is left for the whole key: tell the store. The
        # limiter raises a level only once, when the server first reveals its burst.
        self._client.correct(self.name, level, learned=level > self.level(now))


class LeaseClient:
    """Holds this worker's leases on `key` and exchanges with `store` in the background."""

    def __init__(
        self,
        store: LeaseStore,
        key: str,
        *,
        ttl: float = DEFAULT_TTL,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.store = store
        self.key = key
        self.client_id = uuid.uuid4().hex
        self._ttl = ttl
        self._lease_seconds = lease_seconds
        self._buckets: dict[str, LeasedBucket] = {}
        self._pushed: dict[str, tuple[float, float]] = {}  # (rate, cap) the store has from us
        self._leases: deque[_Lease] = deque()
        self._debt: dict[str, float] = {}
        self._need: dict[str, float] = {}
        self._corrections: dict[str, float] = {}
        self._learned: dict[str, float] = {}
        self._sent_at = -math.inf
        self._pause = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: Callable[[], None] = lambda: None
        self._hold: Callable[[float], None] = lambda seconds: None
        self._adopt: Callable[[str, float, float], None] = lambda name, rate, cap: None
        self._task: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._retry_at = -math.inf
        self._failures = 0
        self._closed = False
        self.exchanges = 0
        self.leases = 0
        self.clients = 1

    # -- the limiter's side ------------------------------------------------------------

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        wake: Callable[[], None],
        hold: Callable[[float], None],
        adopt: Callable[[str, float, float], None],
    ) -> None:
        """Bind to the limiter's loop; the first exchange learns what the store knows."""
        self._loop = loop
        self._wake = wake
        self._hold = hold
        self._adopt = adopt
        self._start()

    def bucket(self, name: str, *, rate: float, capacity: float) -> LeasedBucket:
        bucket = LeasedBucket(self, name, rate=rate, capacity=capacity)
        self._buckets[name] = bucket
        return bucket

    def held(self, name: str, now: float) -> float:
        total = -self._debt.get(name, 0.0)
        for lease in self._leases:
            if lease.expires_at > now:
                total += lease.remaining.get(name, 0.0)
        return total

    def short(self, name: str, missing: float, now: float) -> float:
        """A call needs `missing` more of `name` than is held: ask, and say how long to wait."""
        self._need[name] = max(self._need.get(name, 0.0), missing)
        if self._task is None:
            if now >= self._retry_at:
                self._start()
            elif self._retry is None:
                self._schedule_retry(self._retry_at)
        return _RECHECK  # the answer (or the retry after it) wakes the limiter first

    def give(self, name: str, amount: float, now: float) -> None:
        """Spend (amount < 0) from the oldest live lease first; refund (> 0) to the newest."""
        live = [lease for lease in self._leases if lease.expires_at > now]
        if amount > 0:
            if live:
                live[-1].remaining[name] = live[-1].remaining.get(name, 0.0) + amount
            return
        due = -amount
        for lease in live:
            have = lease.remaining.get(name, 0.0)
            if have > 0:
                take = min(have, due)
                lease.remaining[name] = have - take
                due -= take
                if due <= 0:
                    break
        if due > 0:
            self._debt[name] = self._debt.get(name, 0.0) + due
        while self._leases and (
            self._leases[0].expires_at <= now
            or not any(v > 0 for v in self._leases[0].remaining.values())
        ):
            self._leases.popleft()  # spent or expired: the next exchange says so
        bucket = self._buckets.get(name)
        if (
            bucket is not None
            and self._task is None
            and now >= self._retry_at
            and self.held(name, now) < 0.25 * self._lease_size(bucket)
        ):
            self._start()  # fetch the next lease before anyone has to wait for it

    def correct(self, name: str, remaining: float, *, learned: bool = False) -> None:
        if learned:
            self._learned[name] = remaining
            self._start_soon()
            return
        self._corrections[name] = min(self._corrections.get(name, math.inf), remaining)
        # At a binding limit most answers say little is left: say so with the next
        # exchange, and ask for one just for this at most every half lease.
        if self._loop is not None and self._loop.time() - self._sent_at >= self._lease_seconds / 2:
            self._start_soon()

    def pause(self, seconds: float) -> None:
        self._pause = max(self._pause, seconds)
        self._start_soon()

    def sync(self) -> None:
        """Push rate or burst the limiter learned from headers, if any changed."""
        if any(self._pushed.get(n) != (b.rate, b.capacity) for n, b in self._buckets.items()):
            self._start_soon()

    async def aclose(self) -> None:
        """Give every held lease back to the store (what is unspent returns to the bucket)."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._leases:
            request = self._request(release=True)
            try:
                await self.store.exchange(self.key, request)
            except Exception as error:  # the leases expire on their own
                logger.debug("surge: returning leases failed: %s", error)
            self._leases.clear()

    # -- exchanges -----------------------------------------------------------------------

    def _lease_size(self, bucket: TokenBucket) -> float:
        return min(bucket.rate * self._lease_seconds, bucket.capacity / 2)

    def _start_soon(self) -> None:
        if self._loop is not None and self._task is None and not self._closed:
            self._start()

    def _start(self) -> None:
        if self._loop is None or self._closed or self._task is not None:
            return
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._retry_at = -math.inf
        self._task = self._loop.create_task(self._exchange())

    def _request(self, *, release: bool = False) -> Message:
        now = self._loop.time() if self._loop is not None else 0.0
        held = {
            lease.lease_id: dict(lease.remaining)
            for lease in self._leases
            if lease.expires_at > now
        }
        request: Message = {"client": self.client_id, "ttl": self._ttl, "held": held}
        if release:
            request["release"] = list(held)
            return request
        defaults: Message = {}
        config: Message = {}
        for name, bucket in self._buckets.items():
            conf = {"rate": bucket.rate, "cap": bucket.capacity}
            pushed = self._pushed.get(name)
            if pushed is None:
                defaults[name] = conf
            elif pushed != (bucket.rate, bucket.capacity):
                config[name] = conf
        request["defaults"] = defaults
        request["config"] = config
        # A need already counts the debt (`held` is net of it). Ask for no less than
        # half a lease, even ahead of need: slivers would cost an exchange each.
        need = {n: a for n, a in self._need.items() if a > 0}
        want: Message = {}
        for name, bucket in self._buckets.items():
            size = self._lease_size(bucket)
            need[name] = max(need.get(name, 0.0), min(size / 2, bucket.capacity))
            want[name] = max(size, need[name])
        request["need"] = need
        request["want"] = want
        request["correct"] = dict(self._corrections)
        request["learn"] = dict(self._learned)
        request["pause"] = self._pause
        return request

    async def _exchange(self) -> None:
        assert self._loop is not None
        loop = self._loop
        sent_at = self._sent_at = loop.time()
        request = self._request()
        basis = {name: (b.rate, b.capacity) for name, b in self._buckets.items()}
        needed = dict(self._need)  # what calls wait for, before the half-lease minimum
        self._corrections.clear()
        self._learned.clear()
        self._pause = 0.0
        self._need.clear()
        try:
            reply = await self.store.exchange(self.key, request)
        except Exception as error:
            self._task = None
            # Keep what was to be said; say it again after a short backoff.
            for name, remaining in request["correct"].items():
                self._corrections[name] = min(self._corrections.get(name, math.inf), remaining)
            for name, remaining in request["learn"].items():
                self._learned.setdefault(name, remaining)
            self._pause = max(self._pause, request["pause"])
            self._failures += 1
            backoff = min(_RETRY_MAX, _RETRY_FIRST * 2 ** (self._failures - 1))
            if self._failures in (1, 10) or self._failures % 100 == 0:
                logger.warning(
                    "surge: the shared limit store for %r did not answer (%s); retrying "
                    "in %.2f s. Calls wait for their leases meanwhile.",
                    self.key,
                    type(error).__name__,
                    backoff,
                )
            self._schedule_retry(loop.time() + backoff)
            self._wake()
            return
        self._task = None
        self._failures = 0
        self.exchanges += 1
        self.clients = int(reply.get("clients", 1))
        now = loop.time()
        for lease in list(self._leases):
            if lease.expires_at <= now or lease.lease_id not in request["held"]:
                self._leases.remove(lease)
        for name, conf in reply["config"].items():
            rate, cap = float(conf["rate"]), float(conf["cap"])
            bucket = self._buckets.get(name)
            if bucket is None:
                self._adopt(name, rate, cap)  # learned by another worker
                bucket = self._buckets.get(name)
                if bucket is None:
                    continue
            elif name in basis and (bucket.rate, bucket.capacity) != basis[name]:
                # Headers changed it while this exchange was out: the store's config is
                # older than ours. Keep ours; the next exchange pushes it (with the room
                # the server revealed, which the store grants only with the new burst).
                continue
            if rate > 0:
                bucket.rate = rate
            bucket.capacity = max(1.0, cap)
            self._pushed[name] = (bucket.rate, bucket.capacity)
        if reply["paused_for"] > 0:
            self._hold(float(reply["paused_for"]))
        granted: dict[str, float] = {n: float(a) for n, a in reply["granted"].items()}
        if reply["lease"]:
            self.leases += 1
            for name in list(self._debt):
                paid = min(self._debt[name], granted.get(name, 0.0))
                self._debt[name] -= paid
                granted[name] = granted.get(name, 0.0) - paid
                if self._debt[name] <= 0:
                    del self._debt[name]
            # The lease ends on our clock no later than on the store's: we asked before
            # it granted.
            self._leases.append(_Lease(str(reply["lease"]), sent_at + self._ttl, granted))
        else:
            # Nothing granted: ask again when the store says the need will fit (and, for
            # an empty prefetch, not before a while: others are using the budget).
            for name, amount in needed.items():
                self._need[name] = max(self._need.get(name, 0.0), amount)
            wait = float(reply["wait"])
            if wait > 0:  # our place in the store's queue: come back then
                self._schedule_retry(now + max(wait, 0.001))
            else:
                self._retry_at = now + self._lease_seconds / 2
        if self._corrections or self._learned or self._pause > 0:
            self._start()
        else:
            self.sync()
        self._wake()

    def _schedule_retry(self, when: float) -> None:
        assert self._loop is not None
        if self._closed:
            return
        if self._retry is not None:
            self._retry.cancel()
        self._retry_at = when
        self._retry = self._loop.call_at(when, self._start)
