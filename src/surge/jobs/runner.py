"""`surge run`: a batch file through the engine, checkpointed in the journal as it goes.

The flow: read the input into the journal (stopping on anything that makes the job
impossible), then stream the pending items from the journal through the engine, record
each result as it arrives, and rebuild the output files from the journal at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import surge
from surge._exceptions import (
    AttemptTimeout,
    AuthenticationError,
    BadRequestError,
    RateLimitError,
    ServerError,
    SurgeError,
    TransportError,
)
from surge._feedback import extract_usage
from surge._results import Event, Result, RunStatistics, Usage
from surge.jobs._estimate import CostEstimate, cost_range, estimate_pending, scratch_journal
from surge.jobs._faults import check_key, describe_fault
from surge.jobs._model import JobInputError
from surge.jobs.cache import ResponseCache
from surge.jobs.formats import check_input, read_requests
from surge.jobs.journal import JobSummary, Journal, Outcome, PendingItem
from surge.jobs.output import check_overwrite, output_format, write_outputs
from surge.jobs.pricing import PriceTable
from surge.jobs.progress import ProgressDisplay, Snapshot
from surge.jobs.recovery import recover_from_output
from surge.jobs.tokens import estimate_input_tokens, max_output_tokens
from surge.providers import Provider, ProviderResponse, make_provider, scrub

DEFAULT_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "local": "OPENAI_API_KEY",
}
INTERRUPT_GRACE = 10.0
# Journal meta key prefix (+ run id): the limits a run ran under, for `surge report`.
RUN_LIMITS_PREFIX = "run_limits:"


@dataclass(frozen=True)
class JobSettings:
    """Everything `surge run` was asked to do. Never holds the API key itself."""

    input: str
    output: str
    journal: str | None = None
    format: str | None = None
    model: str | None = None
    endpoint: str | None = None
    prompt_column: str | None = None
    template: str | None = None
    id_column: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    provider: str = "openai"
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int = 50
    rpm: float | None = None
    tpm: float | None = None
    itpm: float | None = None
    otpm: float | None = None
    shared_limit: str | None = None
    """A store whose limit this job shares with other processes (redis://...)."""
    shared_key: str | None = None
    ray: bool = False
    """Send the calls from Ray workers (`ray_workers` actors) on `ray_address`."""
    ray_address: str | None = None
    ray_workers: int = 2
    max_retries: int = 5
    timeout: float | None = 300.0
    order: str = "input"
    max_cost: float | None = None
    max_failures: int | None = None
    dry_run: bool = False
    cache: bool = True
    cache_dir: str | None = None
    prices: str | None = None
    embed_batch: int = 64
    retry_failed: bool = False
    overwrite: bool = False
    recover: bool = False

    @property
    def journal_path(self) -> Path:
        return Path(self.journal) if self.journal else Path(f"{self.output}.journal")


@dataclass(frozen=True)
class JobReport:
    outcome: str  # complete | interrupted | stopped | dry_run
    summary: JobSummary
    wall_seconds: float
    statistics: RunStatistics | None
    output: Path | None
    errors: Path | None
    stopped_reason: str | None = None
    estimate: CostEstimate | None = None
    fault: str | None = None
    """A job-level fault (a refused key, a spent quota, nothing answering) that stopped
    the job, in words with a HINT; the unfinished items stay pending."""

    @property
    def exit_code(self) -> int:
        if self.outcome == "interrupted":
            return 130
        if self.outcome == "dry_run":
            return 0
        if self.summary.failed or self.summary.invalid or self.summary.pending:
            return 1
        return 0


Pack = tuple[PendingItem, ...]


def key_env(settings: JobSettings) -> str:
    """The environment variable the job reads its API key from."""
    return settings.api_key_env or DEFAULT_KEY_ENV.get(settings.provider, "OPENAI_API_KEY")


@dataclass(frozen=True)
class _Deferred:
    """A pack refused with 429 to its last retry, and how many successes the job had
    then: it is sent again once another request succeeds."""

    pack: Pack
    result: Result[Any]
    successes_before: int


def _kind(error: BaseException | None) -> str:
    """A short reason code for the journal, the errors file and the report."""
    if isinstance(error, RateLimitError):
        return "rate_limited"
    if isinstance(error, AttemptTimeout):
        return "timeout"
    if isinstance(error, TransportError):
        return "transport_error" if error.status_code is None else "malformed_response"
    if isinstance(error, ServerError):
        return "server_error"
    if isinstance(error, AuthenticationError):
        return "auth_error"
    if isinstance(error, BadRequestError):
        return "bad_request"
    if isinstance(error, SurgeError):
        return type(error).__name__
    return "error" if error is not None else "unknown"


class _Job:
    def __init__(self, settings: JobSettings, *, display: ProgressDisplay) -> None:
        self.settings = settings
        self.display = display
        self.prices = (
            PriceTable.from_file(settings.prices) if settings.prices else PriceTable.default()
        )
        self.scratch = (
            tempfile.TemporaryDirectory(prefix="surge-dry-run-") if settings.dry_run else None
        )
        self.journal = (
            scratch_journal(settings.journal_path, Path(self.scratch.name))
            if self.scratch is not None
            else Journal(settings.journal_path, recover=settings.recover)
        )
        self.cache = (
            ResponseCache(
                settings.cache_dir, provider=settings.provider, base_url=settings.base_url
            )
            if settings.cache and not settings.dry_run
            else None
        )
        self.api_key_env = key_env(settings)
        self.api_key = os.environ.get(self.api_key_env)
        self.in_flight: dict[int, Pack] = {}
        self.dispatched = 0
        self.deferred: list[_Deferred] = []
        self.successes = 0
        self.answered = asyncio.Event()
        self.reserved_cost: dict[int, float] = {}
        self.spent = 0.0
        self.budget_hit = False
        self.total = 0
        self.finished = 0
        self.failed = 0
        self.failed_this_run = 0  # what --max-failures counts
        self.stream: surge.Run[Any] | None = None
        self.tokens = 0
        self.unpriced = 0  # done items whose model has no known price
        self.wall_offset = 0.0
        self.run_id = 0
        self.limiter: surge.Limiter | None = None
        self.limits_noted: dict[str, float | None] = {}

    # -- input -------------------------------------------------------------------------

    def ingest(self) -> None:
        s = self.settings
        records = read_requests(
            s.input,
            format=s.format,  # type: ignore[arg-type]
            model=s.model,
            endpoint=s.endpoint,  # type: ignore[arg-type]
            prompt_column=s.prompt_column,
            template=s.template,
            id_column=s.id_column,
            defaults=s.defaults,
        )
        source = "<stdin>" if s.input == "-" else s.input
        self.journal.ingest(records, source=source)
        if s.retry_failed:
            self.journal.retry_failed()

    def estimate(self, pack: Pack) -> dict[str, float]:
        """A pack's cost per limit dimension: all tokens (what OpenAI's TPM counts), and
        input and max output apart (what Anthropic's ITPM and OTPM count, the latter
        by the max_tokens surge sends, 1,024 when the request sets none). A request
        with no cap at all reserves no output: the limiter settles with real usage."""
        inputs = sum(estimate_input_tokens(item.body) for item in pack)
        outputs = sum(
            max_output_tokens(item.body, provider=self.settings.provider) or 0 for item in pack
        )
        return {"tokens": inputs + outputs, "input_tokens": inputs, "output_tokens": outputs}

    def estimate_cost(self, item: PendingItem) -> tuple[float, float] | None:
        """(floor, ceiling) in USD, None for a model with no known price."""
        return cost_range(self.prices, item.body, provider=self.settings.provider)

    def cost_of(self, body: dict[str, Any], input_tokens: int, output_tokens: int) -> float | None:
        return self.prices.cost(str(body.get("model", "")), input_tokens, output_tokens)

    # -- packing -----------------------------------------------------------------------

    def packs(self) -> Iterator[Pack]:
        """Pending items in input order, answered from the cache where possible, and
        consecutive embedding inputs of the same request shape packed together."""
        group: list[PendingItem] = []
        for item in self.journal.pending():
            if self.cache is not None and self.answer_from_cache(item):
                continue
            if group and len(group) < self.settings.embed_batch and self.same_pack(group[0], item):
                group.append(item)
                continue
            if group:
                yield tuple(group)
            group = [item]
            if not self.packable(item):
                yield tuple(group)
                group = []
        if group:
            yield tuple(group)

    def packable(self, item: PendingItem) -> bool:
        return (
            item.url.endswith("/embeddings")
            and isinstance(item.body.get("input"), str)
            and self.settings.embed_batch > 1
        )

    def same_pack(self, first: PendingItem, item: PendingItem) -> bool:
        def shape(body: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in body.items() if k != "input"}

        return (
            self.packable(first)
            and self.packable(item)
            and first.url == item.url
            and shape(first.body) == shape(item.body)
        )

    def answer_from_cache(self, item: PendingItem) -> bool:
        assert self.cache is not None
        cached = self.cache.get(item.url, item.body)
        if cached is None:
            return False
        usage = extract_usage(cached)
        now = time.time()
        self.journal.record(
            Outcome(
                custom_id=item.custom_id, state="done", attempts=0, status_code=200,
                response=cached, input_tokens=usage.input_tokens if usage else None,
                output_tokens=usage.output_tokens if usage else None, cost=0.0, cached=True,
                started_at=now, finished_at=now, latency=0.0,
            )
        )  # fmt: skip
        self.finished += 1
        return True

    # -- calling -----------------------------------------------------------------------

    async def call(self, pack: Pack) -> surge.Reply[ProviderResponse]:
        assert self.provider is not None
        if len(pack) == 1:
            return await self.provider.send(pack[0].url, pack[0].body)
        merged = dict(pack[0].body)
        merged["input"] = [item.body["input"] for item in pack]
        reply = await self.provider.send(pack[0].url, merged)
        vectors = len(reply.value.body.get("data") or [])
        if vectors != len(pack):  # checked here, so the engine retries it
            raise TransportError(
                f"embeddings response has {vectors} vectors for {len(pack)} inputs", status_code=200
            )
        return reply

    def split(
        self, pack: Pack, body: dict[str, Any], usage: Usage | None
    ) -> list[tuple[dict[str, Any], int, int]]:
        """Per item: (response body, input tokens, output tokens)."""
        if len(pack) == 1:
            return [(body, usage.input_tokens if usage else 0, usage.output_tokens if usage else 0)]
        data = sorted(body.get("data") or [], key=lambda d: d.get("index", 0))
        total = usage.input_tokens if usage else 0
        weights = [max(1, int(estimate_input_tokens(item.body))) for item in pack]
        shares = [total * w // sum(weights) for w in weights]
        shares[-1] += total - sum(shares)
        out = []
        for vector, share in zip(data, shares, strict=True):
            item_body = {
                "object": "list",
                "data": [{**vector, "index": 0}],
                "model": body.get("model"),
                "usage": {"prompt_tokens": share, "total_tokens": share},
            }
            out.append((item_body, share, 0))
        return out

    def on_event(self, event: Event) -> None:
        pack = self.in_flight.get(event.index)
        if event.kind == "retry" and pack is not None:
            error = event.failure  # surge's reading of what the call raised
            status = getattr(error, "status_code", None)
            for item in pack:
                self.journal.record_attempt(
                    time.time(),
                    item.custom_id,
                    _kind(error),
                    status,
                    scrub(str(error), self.api_key),
                )

    def record(self, result: Result[Any], pack: Pack) -> None:
        started = None if result.started_at is None else result.started_at + self.wall_offset
        finished = None if result.finished_at is None else result.finished_at + self.wall_offset
        response = result.value
        if result.ok and isinstance(response, ProviderResponse):
            parts = self.split(pack, response.body, result.usage)
            for item, (body, tokens_in, tokens_out) in zip(pack, parts, strict=True):
                cost = self.cost_of(item.body, tokens_in, tokens_out)
                self.journal.record(
                    Outcome(
                        custom_id=item.custom_id, state="done", attempts=result.attempts,
                        status_code=200, request_id=response.request_id, response=body,
                        input_tokens=tokens_in, output_tokens=tokens_out, cost=cost,
                        started_at=started, finished_at=finished, latency=result.latency,
                    )
                )  # fmt: skip
                if self.cache is not None:
                    self.cache.put(item.url, item.body, body)
                self.finished += 1
                self.tokens += tokens_in + tokens_out
                self.spent += cost or 0.0
                self.unpriced += cost is None
            self.successes += 1
            return
        if result.status != "failed":
            return  # not started or cancelled: stays pending for the next run
        if isinstance(result.failure, RateLimitError):
            # Out of retries on 429s: while others are being answered this is our pace,
            # not the item's fault. It goes to the back of the queue (see _source).
            self.deferred.append(_Deferred(pack, result, self.successes))
            return
        self.record_failure(result, pack)

    def record_failure(self, result: Result[Any], pack: Pack) -> None:
        started = None if result.started_at is None else result.started_at + self.wall_offset
        finished = None if result.finished_at is None else result.finished_at + self.wall_offset
        error = result.failure
        message = scrub(str(error) or type(error).__name__, self.api_key)
        for item in pack:
            self.journal.record(
                Outcome(
                    custom_id=item.custom_id, state="failed", attempts=result.attempts,
                    status_code=getattr(error, "status_code", None), error_code=_kind(error),
                    error=message, started_at=started, finished_at=finished, latency=result.latency,
                )
            )  # fmt: skip
            self.failed += 1
            self.failed_this_run += 1
        # --max-failures counts items recorded failed, so not a 429 put back in the queue
        # (the engine's own max_failures would count it).
        limit = self.settings.max_failures
        if limit is not None and self.failed_this_run >= limit and self.stream is not None:
            self.stream.stop("max_failures")

    # -- the run -----------------------------------------------------------------------

    provider: Provider | None = None
    fault: str | None = None  # what stopped the job, in words with a HINT

    def open_provider(self) -> None:
        """Before anything is sent: a provider that cannot be built is bad input (exit 2)."""
        s = self.settings
        try:
            if s.ray:
                from surge.ray._fanout import RayProvider

                self.provider = RayProvider(
                    s.provider, base_url=s.base_url, api_key=self.api_key,
                    max_connections=s.concurrency, workers=s.ray_workers, address=s.ray_address,
                )  # fmt: skip
            else:
                self.provider = make_provider(
                    s.provider, base_url=s.base_url, api_key=self.api_key,
                    max_connections=s.concurrency,
                )  # fmt: skip
        except (ImportError, ValueError, ConnectionError, RuntimeError) as exc:
            raise JobInputError(str(exc)) from None

    async def execute(self) -> tuple[str, str | None, RunStatistics | None]:
        s = self.settings
        loop = asyncio.get_running_loop()
        self.wall_offset = time.time() - loop.time()
        summary = self.journal.summary()
        self.total = summary.total - summary.invalid
        self.finished = summary.done
        self.failed = summary.failed
        self.spent = summary.cost
        self.unpriced = summary.unpriced
        assert self.provider is not None, "open_provider() first"
        given = (s.rpm, s.tpm, s.itpm, s.otpm)
        try:
            limiter = surge.Limiter(
                concurrency=s.concurrency, rpm=s.rpm, tpm=s.tpm, itpm=s.itpm, otpm=s.otpm,
                # Told no limits: learn them from the first answer's headers before bursting.
                probe=all(limit is None for limit in given) and s.provider != "local",
                shared=s.shared_limit, key=shared_key(s) if s.shared_limit else None,
            )  # fmt: skip
        except (ConnectionError, ImportError, ValueError) as exc:  # --shared-limit
            raise JobInputError(str(exc)) from None
        self.limiter = limiter
        stream = surge.as_completed(
            self.call,
            self._source(),
            limiter=limiter,
            tokens=self.estimate,
            max_retries=s.max_retries,
            timeout=s.timeout,
            on_event=self.on_event,
        )
        self.stream = stream
        interrupted = 0
        consumer = asyncio.current_task()
        assert consumer is not None

        def on_sigint() -> None:
            nonlocal interrupted
            interrupted += 1
            if interrupted == 1:
                stream.stop("interrupted")
                self.display.note(
                    f"\n[yellow]Interrupted: no new requests; waiting up to {INTERRUPT_GRACE:.0f}s "
                    "for those in flight. Ctrl-C again to stop now.[/]"
                )
                grace.append(loop.call_later(INTERRUPT_GRACE, consumer.cancel))
            else:
                consumer.cancel()

        grace: list[asyncio.TimerHandle] = []
        installed = _install_sigint(loop, on_sigint)
        quiet = _FaultSaidByTheJob()
        logging.getLogger("surge").addFilter(quiet)
        ticker = loop.create_task(self._tick(stream))
        outcome = "complete"
        try:
            async with stream:
                async for result in stream:
                    if result.status == "not_started":
                        # Dispatch stopped and all in flight has finished; the rest stays
                        # pending in the journal, so there is no need to list it.
                        break
                    pack = self.in_flight.pop(result.index, ())
                    self.reserved_cost.pop(result.index, None)
                    if pack:
                        self.record(result, pack)
                    self.answered.set()
        except asyncio.CancelledError:
            if not interrupted:
                raise
            outcome = "interrupted"
        finally:
            for handle in grace:
                handle.cancel()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            if installed:
                loop.remove_signal_handler(signal.SIGINT)
            logging.getLogger("surge").removeFilter(quiet)
            await limiter.aclose()
            await self.provider.aclose()
            if self.cache is not None:
                self.cache.commit()
            self.journal.commit()  # last: raises the failure of a background commit
        if interrupted:
            outcome = "interrupted"
        reason = stream.statistics().stopped
        if outcome == "complete" and (reason is not None or self.budget_hit):
            outcome = "stopped"
            reason = reason or "max_cost"
        if stream.fault is not None:
            self.fault = describe_fault(
                stream.fault, provider=s.provider, base_url=s.base_url,
                key_env=self.api_key_env, key=self.api_key,
            )  # fmt: skip
        self.note_limits()
        self.display.update(self._snapshot(stream), force=True)
        return outcome, reason, stream.statistics()

    async def _source(self) -> AsyncIterator[Pack]:
        """The packs to send: every pending one, then those refused with a 429 to the
        last retry while the provider kept answering others (see `record`), until
        nothing is in flight. Each goes through `_admit` for --max-cost."""
        for pack in self.packs():
            if not await self._admit(pack):
                return
            yield pack
        while self.deferred or self.in_flight:
            again = [d for d in self.deferred if d.successes_before < self.successes]
            if again:
                self.deferred = [d for d in self.deferred if d.successes_before >= self.successes]
                for deferred in again:
                    if not await self._admit(deferred.pack):
                        self.deferred.append(deferred)  # stays pending in the journal
                        return
                    yield deferred.pack
                continue
            if not self.in_flight:
                break
            self.answered.clear()
            await self.answered.wait()
        # Refused to the end with nobody answered since: the provider is not serving this
        # key now, so a 429 is the honest final word (--retry-failed sends them again).
        for deferred in self.deferred:
            self.record_failure(deferred.result, deferred.pack)
        self.deferred = []

    async def _admit(self, pack: Pack) -> bool:
        """Number the pack as the engine will, so events and results map back to items,
        and hold dispatch back while spent plus reserved cost could pass --max-cost:
        until the answers in flight settle their reservations, and for good once
        nothing is in flight and the pack still does not fit."""
        index = self.dispatched
        budget = self.settings.max_cost
        if budget is not None:
            # The ceiling: the request's max output tokens, all billed. Unknown prices
            # were refused before the run.
            estimate = sum((self.estimate_cost(item) or (0.0, 0.0))[1] for item in pack)
            while self.spent + sum(self.reserved_cost.values()) + estimate > budget:
                if not self.reserved_cost:
                    self.budget_hit = True
                    return False
                self.answered.clear()
                await self.answered.wait()
            self.reserved_cost[index] = estimate
        self.dispatched += 1
        self.in_flight[index] = pack
        return True

    async def _tick(self, stream: surge.Run[Any]) -> None:
        while True:
            self.display.update(self._snapshot(stream))
            self.note_limits()
            await asyncio.sleep(0.25)

    def note_limits(self) -> None:
        """Keep the limits this run runs under (given, or learned from the provider's
        headers: the limiter's buckets) in the journal whenever they change, so that
        `surge report` can show them."""
        if self.limiter is None:
            return
        limits: dict[str, float | None] = {
            b.name: round(b.rate_per_minute, 3) for b in self.limiter.statistics().buckets
        }
        limits["concurrency"] = self.limiter.max_concurrency
        if limits != self.limits_noted:
            self.limits_noted = limits
            self.journal.set_meta(_run_limits_key(self.run_id), json.dumps(limits))

    def _snapshot(self, stream: surge.Run[Any]) -> Snapshot:
        stats = stream.statistics()
        return Snapshot(
            done=self.finished, total=self.total, failed=self.failed, in_flight=stats.in_flight,
            retries=stats.retries, rate_limited=stats.rate_limited, tokens=self.tokens,
            cost=None if self.unpriced else self.spent, elapsed=stats.elapsed,
        )  # fmt: skip

    def dry_run(self) -> CostEstimate:
        return estimate_pending(
            self.journal.pending(), self.prices, provider=self.settings.provider
        )


def _run_limits_key(run_id: int) -> str:
    return f"{RUN_LIMITS_PREFIX}{run_id}"


class _FaultSaidByTheJob(logging.Filter):
    """The job reports a job-level fault itself, with the HINT a `surge run` user needs
    (the env var, the URL, rerun): the engine's warning for library users, which points
    at `stop_on_fault=False`, would say it a second time, less usefully."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.funcName != "_on_fault"


def _install_sigint(loop: asyncio.AbstractEventLoop, handler: Any) -> bool:
    try:
        loop.add_signal_handler(signal.SIGINT, handler)
    except (NotImplementedError, RuntimeError, ValueError):
        return False  # not the main thread, or not supported here
    return True


def shared_key(settings: JobSettings) -> str:
    """The name of a --shared-limit: given, or the provider and base URL (no credentials),
    so every job against one endpoint shares one limit."""
    if settings.shared_key:
        return settings.shared_key
    from surge._shared import redact

    return f"{settings.provider}:{redact(settings.base_url or 'default')}"


async def run_job(settings: JobSettings, *, display: ProgressDisplay | None = None) -> JobReport:
    """Run (or resume) a batch job; see `surge run --help`."""
    display = display or ProgressDisplay(enabled=False)
    if settings.order not in ("input", "completion"):
        raise JobInputError(f"--order must be input or completion, got {settings.order!r}")
    if settings.max_failures is not None and settings.max_failures < 1:
        raise JobInputError(
            f"--max-failures must be at least 1, got {settings.max_failures}. HINT: leave it "
            "out to let every item run whatever fails."
        )
    # Bad options, a missing input or an output name we cannot write: refused before
    # the journal exists, so a corrected rerun does not meet an empty job.
    output_format(settings.output)
    check_input(
        settings.input, format=settings.format, model=settings.model,  # type: ignore[arg-type]
        endpoint=settings.endpoint, prompt_column=settings.prompt_column,  # type: ignore[arg-type]
        template=settings.template, id_column=settings.id_column, defaults=settings.defaults,
    )  # fmt: skip
    if not settings.dry_run:  # before the journal exists: a refused job leaves nothing
        check_key(
            settings.provider,
            settings.base_url,
            key_env(settings),
            os.environ.get(key_env(settings)),
        )
    if not settings.dry_run:
        overwrite = settings.overwrite or settings.recover
        check_overwrite(settings.output, settings.journal_path, overwrite=overwrite)
    job = _Job(settings, display=display)
    start = time.monotonic()
    try:
        job.ingest()
        if settings.recover:
            recover_from_output(
                job.journal, settings.output, cost_of=job.cost_of, note=display.note
            )
        if settings.dry_run:
            return JobReport("dry_run", job.journal.summary(), time.monotonic() - start, None, None, None,
                             estimate=job.dry_run())  # fmt: skip
        if settings.max_cost is not None:
            unknown = {m for m in job.journal.pending_models() if job.prices.lookup(m) is None}
            if unknown:
                raise JobInputError(
                    f"--max-cost needs a price for every model; none known for {sorted(unknown)}. "
                    "HINT: pass --prices FILE with their prices per million tokens."
                )
        job.open_provider()
        run_id = job.run_id = job.journal.start_run(asdict(settings))
        with display:
            outcome, reason, stats = await job.execute()
        job.journal.end_run(run_id, outcome)
        output, errors = write_outputs(job.journal, settings.output, order=settings.order)
        return JobReport(outcome, job.journal.summary(), time.monotonic() - start, stats, output, errors,
                         stopped_reason=reason, fault=job.fault)  # fmt: skip
    finally:
        job.journal.close()
        if job.cache is not None:
            job.cache.close()
        if job.scratch is not None:
            job.scratch.cleanup()
