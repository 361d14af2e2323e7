"""Immutable records the engine hands back: one Result per item, plus statistics."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from surge._exceptions import FailedResultsError, SurgeError

T = TypeVar("T")

Status = Literal["ok", "failed", "not_started", "cancelled"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one call consumed, as the provider reported them."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@dataclass(frozen=True, slots=True)
class Result(Generic[T]):
    """What happened to one item.

    `status` is `"ok"` (value holds the return value), `"failed"` (error holds the
    last error, after `attempts` attempts), `"not_started"` (an early stop kept it from
    being dispatched: it was never sent) or `"cancelled"` (it was in flight or waiting
    to retry when the run was cancelled, hit its deadline or stopped on a job-level
    fault). Times are event-loop seconds.

    `error` is the exception the call raised, as `asyncio.gather(...,
    return_exceptions=True)` would give it: your own `ValueError`, the SDK's
    `openai.BadRequestError`. Where surge itself cut the item short, it is surge's
    reason: `AttemptTimeout`, `DeadlineExceeded`, or the job-level fault that stopped
    the run (`Run.fault`).

    `failure` is surge's reading of that error, a `SurgeError` (the same object when
    the error already is one): `failure.retryable`, `failure.reason` (a short code such
    as "rate_limited", "auth_error", "bad_request", "call_error"), `failure.status_code`::

        for r in results:
            if not r.ok:
                print(r.index, r.failure.reason, r.failure.status_code, repr(r.error))
    """

    index: int
    item: Any
    status: Status
    value: T | None = None
    error: BaseException | None = None
    attempts: int = 0
    usage: Usage | None = None
    latency: float | None = None
    """Duration of the last attempt."""
    started_at: float | None = None
    finished_at: float | None = None
    failure: SurgeError | None = None
    """surge's classification of `error` (filled in from it when not given)."""

    def __post_init__(self) -> None:
        if self.failure is None and self.error is not None:
            object.__setattr__(self, "failure", _classify(self.error))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def elapsed(self) -> float | None:
        """From the first attempt's start to the end, retries and backoff included."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def unwrap(self) -> T:
        """The value, or raise the error (or a FailedResultsError if there is none)."""
        if self.status == "ok":
            return self.value  # type: ignore[return-value]
        if self.error is not None:
            raise self.error
        raise FailedResultsError([self])


class Results(list[Result[T]]):
    """The list `gather` returns, in input order, with a few conveniences.

    `fault` is the job-level fault that stopped the run (a refused key, a spent quota,
    an endpoint nothing answers at; see `surge.RunOptions`), or None.
    """

    def __init__(
        self, results: Iterable[Result[T]] = (), *, fault: BaseException | None = None
    ) -> None:
        super().__init__(results)
        self.fault = fault

    @property
    def failures(self) -> list[Result[T]]:
        """Every result that is not ok (failed, not started or cancelled)."""
        return [r for r in self if r.status != "ok"]

    def values(self) -> list[T | None]:
        """The values in input order; None where an item did not succeed."""
        return [r.value for r in self]

    def raise_for_failures(self) -> Results[T]:
        """Raise FailedResultsError if any item did not succeed; return self otherwise.

        For callers who prefer `asyncio.gather`'s all-or-nothing behaviour::

            values = (await surge.gather(fn, items)).raise_for_failures().values()
        """
        failures = self.failures
        if failures:
            raise FailedResultsError(failures)
        return self

    def usage(self) -> Usage:
        total = Usage()
        for r in self:
            if r.usage is not None:
                total = total + r.usage
        return total


@dataclass(frozen=True, slots=True)
class RunStatistics:
    """A snapshot of one run (trio-style `statistics()`); the progress bar reads these."""

    started: int
    """Items whose first attempt began."""
    succeeded: int
    failed: int
    cancelled: int
    not_started: int
    in_flight: int
    """Items started and not finished (includes items waiting to retry)."""
    attempts: int
    retries: int
    rate_limited: int
    """Attempts answered with 429."""
    input_tokens: int
    output_tokens: int
    elapsed: float
    stopped: str | None
    """Why dispatch stopped early, or None."""

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def requests_per_second(self) -> float:
        return self.finished / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        tokens = self.input_tokens + self.output_tokens
        return tokens / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Event:
    """Something happened to one item; `on_event=` hooks (progress bars) receive these.

    kind: "start" (first attempt begins), "retry" (an attempt failed and another will
    follow, after `delay` seconds), "done" (the item finished; `result` is set).
    `error` and `failure` are as on `Result`: the exception raised, and surge's
    classification of it.
    """

    kind: Literal["start", "retry", "done"]
    index: int
    time: float
    attempt: int = 0
    error: BaseException | None = None
    delay: float | None = None
    result: Result[Any] | None = None
    failure: SurgeError | None = None

    def __post_init__(self) -> None:
        if self.failure is None and self.error is not None:
            object.__setattr__(self, "failure", _classify(self.error))


def _classify(error: BaseException) -> SurgeError:
    from surge._retry import classify  # _retry reads these records: import at use

    return classify(error)
