"""The dispatch loop: lazy task creation, bounded memory, ordered or streaming results.

Items are pulled from the source only when there is capacity to start them: a limiter
permit (concurrency slot + rate) is acquired *before* the task is created, so a
million-item generator costs memory in proportion to the calls in flight, not to the
items. One task runs per started item and owns its retries; results flow to the
consumer through a deque, and a consumed result frees room for the next item.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import sys
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Sized,
)
from typing import Any, Generic, TypedDict, TypeVar, cast

from typing_extensions import Unpack

from surge._exceptions import (
    AttemptTimeout,
    AuthenticationError,
    ConnectError,
    DeadlineExceeded,
    FatalError,
    QuotaExceededError,
    RateLimitError,
    RetryableError,
    SurgeError,
)
from surge._feedback import (
    RateLimitHints,
    Reply,
    extract_headers,
    extract_usage,
    parse_rate_limit_headers,
)
from surge._limits import Estimate, Limiter, Permit
from surge._limits import total_tokens as _total
from surge._loop import run_in_background
from surge._results import Event, Result, Results, RunStatistics, Usage
from surge._retry import RetryPolicy, Wait, classify, full_jitter
from surge._wire import AttemptScope, current_attempt, sdk_retry_count

T = TypeVar("T")
logger = logging.getLogger("surge")

# How many items a run may hold (in flight, retrying, or finished but not yet consumed)
# per concurrency slot. Above 1 so an item waiting out a backoff does not idle a slot.
_WINDOW_PER_SLOT = 2
# Without any cap, the dispatcher yields to the loop this often so calls can finish
# (and free their memory) while a fast source is drained.
_YIELD_EVERY = 64
# A job-level fault stops the run (see RunOptions). Connections that cannot be made at all
# count as one after this many in a row with no answer in between: at once when the run
# has never reached the server (a wrong base URL), and only once the streak has lasted
# _CONNECT_FAULT_SPAN seconds when it has (a server restarting for a few seconds is
# retried like any transient failure).
_CONNECT_FAULT_STREAK = 3
_CONNECT_FAULT_SPAN = 10.0


class RunOptions(TypedDict, total=False):
    """Keyword options shared by `gather`, `as_completed` and `map`.

    `stop_on_fault` (default True): stop the whole run on a job-level fault, a failure
    that says nothing about the item and would fail every other one too: the provider
    refuses the key (AuthenticationError, 401/403), the billing quota is spent
    (QuotaExceededError), or nothing answers at the endpoint (ConnectError three times
    in a row with no answer between, at the start of a run, or for 10 s and more once
    it has had answers). Then dispatch stops at once, items in flight or waiting to
    retry are cancelled and come back "cancelled", those never sent "not_started",
    each with the fault as `error`; `Run.fault` holds it and `statistics().stopped` is
    "job_fault". Pass False to have every item tried regardless.
    """

    concurrency: int | None
    rpm: float | None
    tpm: float | None
    limiter: Limiter | None
    tokens: Callable[[Any], Estimate] | None
    max_retries: int
    backoff: Wait
    retry: RetryPolicy | None
    timeout: float | None
    deadline: float | None
    max_failures: int | None
    token_budget: float | None
    stop_when: Callable[[Result[Any]], bool] | None
    on_event: Callable[[Event], None] | None
    seed: int | None
    stop_on_fault: bool


_KNOWN_OPTIONS = frozenset(RunOptions.__annotations__)


class Run(Generic[T]):
    """One pass of a call over many items. `as_completed` returns it.

    Iterate it to receive each Result as it finishes::

        async for result in surge.as_completed(call, prompts, concurrency=20):
            print(result.index, result.value)

    `statistics()` gives a live snapshot; `stop()` stops dispatching new items (those
    not yet started come back as "not_started" results); `fault` is the job-level fault
    (a refused key, a spent quota, an endpoint nothing answers at) that stopped the run,
    if one did (see `RunOptions`).
    """

    def __init__(
        self,
        fn: Callable[[Any], Awaitable[T]],
        items: Iterable[Any] | AsyncIterable[Any],
        **options: Unpack[RunOptions],
    ) -> None:
        unknown = set(options) - _KNOWN_OPTIONS
        if unknown:
            raise TypeError(
                f"unknown option(s) {sorted(unknown)}. HINT: the options are "
                f"{', '.join(sorted(_KNOWN_OPTIONS))}."
            )
        if not callable(fn):
            raise TypeError(
                f"fn must be callable, got {type(fn).__name__}. HINT: pass the function "
                "itself (surge.gather(call, items)), not call(...)."
            )
        if not isinstance(items, (Iterable, AsyncIterable)):
            raise TypeError(
                f"items must be an iterable or async iterable, got {type(items).__name__}"
            )
        self._fn = fn
        self._items = items
        self.total: int | None = len(items) if isinstance(items, Sized) else None
        limiter = options.get("limiter")
        if limiter is not None:
            clashing = [k for k in ("concurrency", "rpm", "tpm") if options.get(k) is not None]
            if clashing:
                raise ValueError(
                    f"pass either limiter= or {'/'.join(clashing)}=, not both. HINT: set "
                    "the limits on the shared Limiter: surge.Limiter(concurrency=..., rpm=...)."
                )
            self._limiter = limiter
        else:
            self._limiter = Limiter(
                concurrency=options.get("concurrency"),
                rpm=options.get("rpm"),
                tpm=options.get("tpm"),
            )
        self._tokens = options.get("tokens")
        retry = options.get("retry")
        if retry is None:
            retry = RetryPolicy(
                max_retries=options.get("max_retries", 5),
                wait=options.get("backoff", full_jitter()),
            )
        elif "max_retries" in options or "backoff" in options:
            raise ValueError("pass either retry= or max_retries=/backoff=, not both")
        self._retry = retry
        self._timeout = _positive_or_none("timeout", options.get("timeout"))
        self._deadline = _positive_or_none("deadline", options.get("deadline"))
        self._max_failures = options.get("max_failures")
        if self._max_failures is not None and self._max_failures < 1:
            raise ValueError("max_failures must be >= 1 or None")
        self._token_budget = _positive_or_none("token_budget", options.get("token_budget"))
        self._stop_when = options.get("stop_when")
        self._on_event = options.get("on_event")
        self._rng = random.Random(options.get("seed"))
        stop_on_fault = options.get("stop_on_fault", True)
        if not isinstance(stop_on_fault, bool):
            raise TypeError(
                f"stop_on_fault must be True or False, got {stop_on_fault!r}. HINT: "
                "stop_on_fault=False tries every item even after a job-level fault."
            )
        self._stop_on_fault = stop_on_fault
        self._fault: BaseException | None = None
        self._connect_streak = 0
        self._connect_streak_since = 0.0
        self._reached_server = False
        self._warned_sdk_retry = False
        ceiling = self._limiter.max_concurrency
        self._window = None if ceiling is None else ceiling * _WINDOW_PER_SLOT

        self._loop: asyncio.AbstractEventLoop | None = None
        self._iterator: AsyncGenerator[Result[T], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._dispatch_finished = False
        self._ready: deque[Result[T]] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._window_waiter: asyncio.Future[None] | None = None
        self._live = 0
        self._leftover: tuple[int, Any] | None = None
        self._source: AsyncIterator[tuple[int, Any]] | None = None
        self._stop_reason: str | None = None
        self._closing = False
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._reserved = 0.0
        # statistics
        self._started_at = 0.0
        self._ended_at: float | None = None
        self._started = self._succeeded = self._failed = self._cancelled = 0
        self._not_started = self._attempts = self._retries = self._rate_limited = 0
        self._usage = Usage()

    # -- public ----------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Result[T]]:
        if self._iterator is not None:
            raise RuntimeError("a Run can be iterated once; call as_completed() again")
        self._iterator = self._results()
        return self._iterator

    async def aclose(self) -> None:
        """Cancel whatever is still in flight and wait for it; idempotent.

        Leaving an `async for` early (break, return, an exception) leaves the rest to the
        garbage collector; `async with` closes the run at once instead::

            async with surge.as_completed(call, items) as results:
                async for r in results:
                    if r.ok:
                        break
        """
        if self._iterator is not None:
            await self._iterator.aclose()

    async def __aenter__(self) -> Run[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def stop(self, reason: str = "stopped") -> None:
        """Stop dispatching: items in flight finish; the rest come back not_started."""
        if self._stop_reason is not None:
            return
        self._stop_reason = reason
        if self._dispatcher is not None and self._dispatcher is not asyncio.current_task():
            self._dispatcher.cancel()

    @property
    def limiter(self) -> Limiter:
        return self._limiter

    @property
    def fault(self) -> BaseException | None:
        """The job-level fault that stopped the run (see `RunOptions`), or None."""
        return self._fault

    def statistics(self) -> RunStatistics:
        now = self._loop.time() if self._loop is not None else 0.0
        end = self._ended_at if self._ended_at is not None else now
        finished = self._succeeded + self._failed + self._cancelled
        return RunStatistics(
            started=self._started,
            succeeded=self._succeeded,
            failed=self._failed,
            cancelled=self._cancelled,
            not_started=self._not_started,
            in_flight=self._started - finished,
            attempts=self._attempts,
            retries=self._retries,
            rate_limited=self._rate_limited,
            input_tokens=self._usage.input_tokens,
            output_tokens=self._usage.output_tokens,
            elapsed=max(0.0, end - self._started_at) if self._loop is not None else 0.0,
            stopped=self._stop_reason,
        )

    # -- consumer side ---------------------------------------------------------------

    async def _results(self) -> AsyncGenerator[Result[T], None]:
        loop = self._loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        self._source = _enumerate(self._items)
        self._dispatcher = loop.create_task(self._dispatch())
        if self._deadline is not None:
            self._deadline_timer = loop.call_later(self._deadline, self._on_deadline)
        try:
            while True:
                while self._ready:
                    result = self._ready.popleft()
                    self._free_window_place()
                    yield result
                if self._dispatch_finished:
                    if self._dispatcher.done() and not self._dispatcher.cancelled():
                        # The source or the tokens= estimate raised: a bug, not a bad item.
                        dispatch_error = self._dispatcher.exception()
                        if dispatch_error is not None:
                            raise dispatch_error
                    if not self._tasks:
                        break
                self._wakeup = loop.create_future()
                await self._wakeup
            # Whatever dispatch left behind was never sent; say so, one item at a time,
            # so a consumer that breaks out does not drain an endless source.
            async for index, item in self._leftovers():
                self._not_started += 1
                yield Result(index=index, item=item, status="not_started", error=self._fault)
        finally:
            self._ended_at = loop.time()
            await self._shutdown()

    async def _leftovers(self) -> AsyncIterator[tuple[int, Any]]:
        if self._leftover is not None:
            yield self._leftover
            self._leftover = None
        if self._source is not None and self._stop_reason is not None:
            async for pair in self._source:
                yield pair

    def _notify(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _free_window_place(self) -> None:
        self._live -= 1
        if self._window_waiter is not None and not self._window_waiter.done():
            self._window_waiter.set_result(None)

    async def _shutdown(self) -> None:
        """Cancel whatever still runs and wait for it, so no task outlives the run."""
        self._closing = True
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        pending = [t for t in (self._dispatcher, *self._tasks) if t is not None and not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._source is not None and hasattr(self._source, "aclose"):
            await self._source.aclose()

    # -- dispatch side ---------------------------------------------------------------

    async def _dispatch(self) -> None:
        assert self._source is not None and self._loop is not None
        loop = self._loop
        pending: tuple[int, Any] | None = None
        since_yield = 0
        try:
            async for pending in self._source:
                if self._window is not None:
                    while self._live >= self._window:
                        self._window_waiter = loop.create_future()
                        await self._window_waiter
                index, item = pending
                estimate = self._tokens(item) if self._tokens is not None else 0.0
                if self._token_budget is not None and (
                    self._usage.total_tokens + self._reserved + _total(estimate)
                    > self._token_budget
                ):
                    self.stop("token_budget")
                if self._stop_reason is not None:
                    break
                permit = self._limiter.try_acquire(estimate) or await self._limiter.acquire(
                    estimate
                )
                self._live += 1
                total = _total(estimate)
                self._reserved += total
                task = loop.create_task(self._run_item(index, item, permit, estimate, total))
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
                pending = None
                if self._stop_reason is not None:
                    break
                since_yield += 1
                if self._window is None and since_yield >= _YIELD_EVERY:
                    since_yield = 0
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            if self._closing or self._stop_reason is None:
                raise
        finally:
            self._leftover = pending
            self._dispatch_finished = True
            self._notify()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._notify()

    def _on_deadline(self) -> None:
        self.stop("deadline")
        for task in list(self._tasks):
            task.cancel()

    async def _run_item(
        self, index: int, item: Any, permit: Permit, estimate: Estimate, total: float
    ) -> None:
        assert self._loop is not None
        loop = self._loop
        first_start = loop.time()
        self._started += 1
        if self._on_event is not None:
            self._emit(Event("start", index, first_start, attempt=1))
        attempt = 0
        error: BaseException | None = None
        latency: float | None = None
        try:
            while True:
                attempt += 1
                self._attempts += 1
                attempt_start = loop.time()
                try:
                    raw = await self._attempt(item, permit)
                except asyncio.CancelledError:
                    self._limiter.release(permit, outcome="cancelled")
                    raise
                except Exception as exc:
                    latency = loop.time() - attempt_start
                    error = exc
                    failure = classify(exc)
                    self._check_sdk_retries(exc)
                    hints = None
                    if isinstance(failure, RetryableError):
                        hints = failure.hints or RateLimitHints(retry_after=failure.retry_after)
                    rate_limited = isinstance(failure, RateLimitError)
                    if rate_limited:
                        self._rate_limited += 1
                    self._limiter.release(
                        permit,
                        outcome="rate_limited" if rate_limited else "error",
                        latency=latency,
                        hints=hints,
                    )
                    if self._is_job_fault(failure, loop.time()):
                        self._on_fault(failure)
                        self._finish(
                            index, item, "cancelled", None, error, attempt, None, latency,
                            first_start, failure,
                        )  # fmt: skip
                        return
                    if isinstance(failure, FatalError) or attempt > self._retry.max_retries:
                        self._finish(
                            index, item, "failed", None, error, attempt, None, latency,
                            first_start, failure,
                        )  # fmt: skip
                        return
                    delay = self._retry.delay(attempt, failure, self._rng)
                    self._retries += 1
                    if self._on_event is not None:
                        self._emit(
                            Event(
                                "retry", index, loop.time(), attempt, error=error, delay=delay,
                                failure=failure,
                            )
                        )  # fmt: skip
                    await asyncio.sleep(delay)
                    permit = await self._limiter.acquire(estimate)
                    continue
                latency = loop.time() - attempt_start
                self._connect_streak = 0
                self._reached_server = True
                value, usage, hints = _unpack(raw)
                self._limiter.release(
                    permit,
                    outcome="ok",
                    usage_tokens=usage.total_tokens if usage is not None else total,
                    input_tokens=usage.input_tokens if usage is not None else None,
                    output_tokens=usage.output_tokens if usage is not None else None,
                    latency=latency,
                    hints=hints,
                )
                self._finish(index, item, "ok", value, None, attempt, usage, latency, first_start)
                return
        except asyncio.CancelledError:
            if self._closing or self._stop_reason not in ("deadline", "job_fault"):
                raise
            reason = (
                self._fault
                if self._stop_reason == "job_fault"
                else DeadlineExceeded(f"deadline of {self._deadline}s passed")
            )
            self._finish(
                index, item, "cancelled", None, reason, attempt, None, latency, first_start
            )
        finally:
            self._reserved -= total

    def _is_job_fault(self, error: BaseException, now: float) -> bool:
        """Whether this failed attempt stops the whole run (see `RunOptions`)."""
        if not isinstance(error, ConnectError):
            self._connect_streak = 0
            self._reached_server = True
            return self._stop_on_fault and isinstance(
                error, (AuthenticationError, QuotaExceededError)
            )
        self._connect_streak += 1
        if self._connect_streak == 1:
            self._connect_streak_since = now
        return (
            self._stop_on_fault
            and self._connect_streak >= _CONNECT_FAULT_STREAK
            and (
                not self._reached_server or now - self._connect_streak_since >= _CONNECT_FAULT_SPAN
            )
        )

    def _on_fault(self, error: BaseException) -> None:
        """Stop dispatching and cancel every other item in flight or waiting to retry."""
        if self._fault is not None:
            return
        self._fault = error
        status = getattr(error, "status_code", None)
        logger.warning(
            "surge: stopping the run on a job-level fault: %s%s. The other items are "
            "cancelled or not started. HINT: %s (or pass stop_on_fault=False to try every "
            "item regardless).",
            type(error).__name__,
            f" (HTTP {status})" if status is not None else "",
            _FAULT_HINTS.get(type(error), "check the endpoint and the key"),
        )
        self.stop("job_fault")
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    async def _attempt(self, item: Any, permit: Permit) -> Any:
        # Wired HTTP clients (surge.wire) find this run's limiter and permit here.
        scope = AttemptScope(self._limiter, permit, self._note_sdk_retry)
        token = current_attempt.set(scope)
        try:
            if self._timeout is None:
                return await self._call_once(item)
            if sys.version_info >= (3, 11):
                deadline = scope.deadline = asyncio.timeout(self._timeout)
                try:
                    async with deadline:
                        return await self._call_once(item)
                except TimeoutError:
                    if deadline.expired():  # surge's timeout, not one the call raised
                        raise AttemptTimeout(f"attempt ran past timeout={self._timeout}s") from None
                    raise
            try:  # pragma: no cover
                return await asyncio.wait_for(self._call_once(item), self._timeout)
            except asyncio.TimeoutError:  # pragma: no cover
                raise AttemptTimeout(f"attempt ran past timeout={self._timeout}s") from None
        finally:
            current_attempt.reset(token)

    def _check_sdk_retries(self, error: BaseException) -> None:
        """An SDK exception carries its last request, and with it the SDK's retry count."""
        if self._warned_sdk_retry:
            return
        request = getattr(error, "request", None)
        if request is None:
            request = getattr(getattr(error, "response", None), "request", None)
        retries = sdk_retry_count(request) if request is not None else 0
        if retries:
            self._note_sdk_retry(retries)

    def _note_sdk_retry(self, retries: int) -> None:
        if self._warned_sdk_retry:
            return
        self._warned_sdk_retry = True
        logger.warning(
            "surge: the client's SDK retried a request by itself (%d time(s)), underneath "
            "surge's own retries: the two fight, and the SDK's retries skip surge's limits. "
            "HINT: wire the client once and use what it returns: client = "
            "surge.wire(openai.AsyncOpenAI()) (turns the SDK's retries off and lets surge "
            "see every response's rate-limit headers).",
            retries,
        )

    async def _call_once(self, item: Any) -> Any:
        # A sync function's value is taken as is; an awaitable (coroutine functions, and
        # lambdas that return a coroutine) is awaited.
        outcome = self._fn(item)
        return await outcome if inspect.isawaitable(outcome) else outcome

    def _finish(
        self,
        index: int,
        item: Any,
        status: Any,
        value: Any,
        error: BaseException | None,
        attempts: int,
        usage: Usage | None,
        latency: float | None,
        started_at: float,
        failure: SurgeError | None = None,
    ) -> None:
        assert self._loop is not None
        result: Result[T] = Result(
            index=index,
            item=item,
            status=status,
            value=cast("T | None", value),
            error=error,
            attempts=attempts,
            usage=usage,
            latency=latency,
            started_at=started_at,
            finished_at=self._loop.time(),
            failure=failure,
        )
        if status == "ok":
            self._succeeded += 1
        elif status == "failed":
            self._failed += 1
        else:
            self._cancelled += 1
        if usage is not None:
            self._usage = self._usage + usage
        self._ready.append(result)
        self._notify()
        if self._on_event is not None:
            self._emit(
                Event(
                    "done",
                    index,
                    result.finished_at or 0.0,
                    attempts,
                    error=error,
                    result=result,
                    failure=result.failure,
                )
            )
        if self._max_failures is not None and self._failed >= self._max_failures:
            self.stop("max_failures")
        elif self._stop_when is not None and self._stop_when(result):
            self.stop("stop_when")

    def _emit(self, event: Event) -> None:
        assert self._on_event is not None
        try:
            self._on_event(event)
        except Exception:  # a broken progress bar must not sink the batch
            logger.exception("surge: on_event hook raised; continuing")


_FAULT_HINTS: dict[type[BaseException], str] = {
    AuthenticationError: "the provider refused the API key: check that it is set and valid",
    QuotaExceededError: "the account's billing quota is spent: add credit or use another key",
    ConnectError: "nothing answers at the endpoint: check the base URL and that the server runs",
}


def _unpack(raw: Any) -> tuple[Any, Usage | None, RateLimitHints | None]:
    """Separate a call's value from the feedback it carries."""
    if isinstance(raw, Reply):
        usage = raw.usage if raw.usage is not None else extract_usage(raw.value)
        headers = raw.headers if raw.headers is not None else extract_headers(raw.value)
        value = raw.value
    else:
        usage = extract_usage(raw)
        headers = extract_headers(raw)
        value = raw
    hints = parse_rate_limit_headers(headers) if headers else None
    return value, usage, hints


async def _enumerate(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[tuple[int, Any]]:
    index = 0
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield index, item
            index += 1
    else:
        for item in items:
            yield index, item
            index += 1


def _positive_or_none(name: str, value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
    return value


def as_completed(
    fn: Callable[[Any], Awaitable[T]],
    items: Iterable[Any] | AsyncIterable[Any],
    **options: Unpack[RunOptions],
) -> Run[T]:
    """Run `fn` over `items` concurrently and yield each Result as it finishes.

    `items` may be a list, a generator or an async iterable of unknown length; no task
    is created before there is capacity to start it.

        async for r in surge.as_completed(summarize, docs, concurrency=20, rpm=500):
            if r.ok:
                print(r.index, r.value)
    """
    return Run(fn, items, **options)


async def gather(
    fn: Callable[[Any], Awaitable[T]],
    items: Iterable[Any] | AsyncIterable[Any],
    **options: Unpack[RunOptions],
) -> Results[T]:
    """Run `fn` over `items` concurrently; return one Result per item, in input order.

    One item's failure never raises out of `gather`; call `.raise_for_failures()` on
    the returned list to get `asyncio.gather`'s all-or-nothing behaviour.

        results = await surge.gather(embed, texts, concurrency=50, rpm=3000)
        vectors = results.raise_for_failures().values()
    """
    run = Run(fn, items, **options)
    ordered: list[Result[T] | None] = [None] * (run.total or 0)
    async for result in run:
        if result.index >= len(ordered):
            ordered.extend([None] * (result.index + 1 - len(ordered)))
        ordered[result.index] = result
    return Results((r for r in ordered if r is not None), fault=run.fault)


def map(
    fn: Callable[[Any], Awaitable[T]],
    items: Iterable[Any] | AsyncIterable[Any],
    **options: Unpack[RunOptions],
) -> Results[T]:
    """The synchronous form of `gather`, for scripts and notebooks.

    Every `map` in a process runs on one long-lived event loop in a background thread,
    so a module-level async client (`client = surge.wire(openai.AsyncOpenAI())`), whose
    connections belong to the loop that first used them, serves every call::

        results = surge.map(summarize, texts, concurrency=20)   # as often as you like

    From inside a running loop (a Jupyter cell) it blocks that loop until done; there,
    `await surge.gather(...)` is the better call. Ctrl-C cancels the calls in flight.
    """
    return run_in_background(gather(fn, items, **options))
