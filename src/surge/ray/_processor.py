"""`surge.ray.Processor`: the engine inside Ray Data workers, under one shared limit.

Each worker is an async actor (`map_batches` with an async callable class) that keeps
up to `concurrency_per_worker` calls in flight with `surge.gather`; every worker's
`surge.Limiter` leases from the cluster's ledger actor (`_actor_limiter.py`), so N
workers on M machines together keep to one key's RPM/TPM.

Rows keep their columns and gain `response` (the provider's JSON body, as text),
`text` (the reply's text, for chat and Anthropic messages), `error` (null, or
"reason: message"), `usage` ({input_tokens, output_tokens}) and `attempts`. A row that
fails is a row with its error; nothing a row does fails the Dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import surge
from surge._shared import redact
from surge.jobs.output import _reply_text
from surge.jobs.tokens import estimate_input_tokens, max_output_tokens
from surge.providers import make_provider, scrub
from surge.ray._progress import Counts, Watcher, progress_actor

Row = dict[str, Any]

_ENDPOINTS = {
    "chat": "/v1/chat/completions",
    "embeddings": "/v1/embeddings",
    "messages": "/v1/messages",
}
_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
RESULT_COLUMNS = ("response", "text", "error", "usage", "attempts")


class _Secret:
    """The API key on its way to the workers, through Ray's object store: never in task
    arguments, never in a repr."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('***')"


@dataclass(frozen=True)
class _Spec:
    """What every worker needs, pickled into its constructor arguments (no secret in it:
    `secret` is an object reference to a `_Secret`)."""

    provider: str
    base_url: str | None
    endpoint: str
    model: str | None
    secret: Any
    limits: Mapping[str, float | None]
    concurrency: int
    max_retries: int
    timeout: float | None
    preprocess: Callable[[Row], Mapping[str, Any]] | None
    postprocess: Callable[[Row], Mapping[str, Any]] | None
    key: str
    ledger: Any
    id_column: str | None
    progress: Any = None  # the job's progress actor, or None


class Processor:
    """Run an LLM or embedding call for every row of a Ray Dataset, under one limit.

    >>> processor = surge.ray.Processor(
    ...     base_url="http://localhost:8000/v1", model="gpt-4o-mini", rpm=3000,
    ...     workers=3, concurrency_per_worker=64,
    ...     preprocess=lambda row: {"messages": [{"role": "user", "content": row["q"]}]},
    ... )
    >>> answers = processor(ray.data.from_items([{"q": "Hi"}])).take_all()

    - `preprocess(row)` returns the request body (or the part of it that differs:
      `model` is filled in). Without it a row needs a `body` column (a Batch-JSONL
      body), a `messages` column, or a `prompt` column (sent as one user message).
    - `postprocess(row)` gets the row with its result columns (and `response` parsed)
      and returns columns to add or replace.
    - `rpm`, `tpm`, `itpm`, `otpm`: the key's limits, for all workers together.
    - `key`: the name of the shared limit; default: derived from the base URL and
      provider, so processors on one endpoint share one limit.
    - `api_key_env`: the environment variable holding the API key, read here on the
      driver (default OPENAI_API_KEY or ANTHROPIC_API_KEY); it reaches the workers
      through Ray's object store, not their arguments.
    - `address`: the Ray cluster to connect to when this process is not connected yet
      (`ray.init(address=...)`; default: a local Ray). One that does not answer fails at
      once with a HINT.
    - `id_column`: the column that identifies a row for `resume_from` (default
      `custom_id`, added as a hash of the row's request when the rows have none).
    - `progress`: one line for the whole job on stderr (rows finished/total, req/s,
      tok/s, 429s, ETA), fed by the workers once per batch. Default: on where stderr
      is a terminal; `True` also logs a line every few seconds elsewhere; `False`: off.
      Ray Data draws its own per-operator bars beside it unless
      `DataContext.enable_progress_bars` is off.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        model: str | None = None,
        provider: str = "openai",
        endpoint: str = "chat",
        rpm: float | None = None,
        tpm: float | None = None,
        itpm: float | None = None,
        otpm: float | None = None,
        workers: int = 2,
        concurrency_per_worker: int = 64,
        batch_size: int | None = None,
        num_cpus: float = 1.0,
        preprocess: Callable[[Row], Mapping[str, Any]] | None = None,
        postprocess: Callable[[Row], Mapping[str, Any]] | None = None,
        max_retries: int = 5,
        timeout: float | None = 600.0,
        key: str | None = None,
        api_key_env: str | None = None,
        id_column: str | None = None,
        address: str | None = None,
        progress: bool | None = None,
    ) -> None:
        if provider not in ("openai", "anthropic"):
            raise ValueError(
                f"provider={provider!r} is not one surge.ray knows. HINT: provider='openai' "
                "(any OpenAI-compatible endpoint) or provider='anthropic'."
            )
        if endpoint not in _ENDPOINTS and not endpoint.startswith("/"):
            raise ValueError(
                f"endpoint={endpoint!r}: HINT: use 'chat', 'embeddings', 'messages' or a "
                "path such as '/v1/chat/completions'."
            )
        for name, value in (
            ("workers", workers),
            ("concurrency_per_worker", concurrency_per_worker),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        for name, fn in (("preprocess", preprocess), ("postprocess", postprocess)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a function of one row (a dict), got {fn!r}")
        if provider == "anthropic" and endpoint == "chat":
            endpoint = "messages"
        self.provider = provider
        self.base_url = base_url
        self.endpoint = _ENDPOINTS.get(endpoint, endpoint)
        self.model = model
        self.limits = {"rpm": rpm, "tpm": tpm, "itpm": itpm, "otpm": otpm}
        surge.Limiter(rpm=rpm, tpm=tpm, itpm=itpm, otpm=otpm)  # checks them, with its HINTs
        self.workers = workers
        self.concurrency_per_worker = concurrency_per_worker
        # Ray Data runs up to 4 batches of an async worker at once: two fill it.
        self.batch_size = batch_size or max(1, concurrency_per_worker // 2)
        self.num_cpus = num_cpus
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.max_retries = max_retries
        self.timeout = timeout
        self.key = key or f"{provider}:{redact(base_url or 'default')}"
        self.api_key_env = api_key_env or _KEY_ENV[provider]
        self.id_column = id_column
        self.address = address
        self.progress = sys.stderr.isatty() if progress is None else bool(progress)
        self._watcher: Watcher | None = None

    def __call__(self, dataset: Any, *, resume_from: str | None = None) -> Any:
        """A lazy Dataset with the result columns. With `resume_from` (the output a
        previous run wrote), rows already answered there are left out: nothing paid for
        is asked again."""
        import ray

        from surge.ray._actor_limiter import ledger_actor

        if not ray.is_initialized():
            connect(self.address)
        secret = os.environ.get(self.api_key_env)
        spec = _Spec(
            provider=self.provider,
            base_url=self.base_url,
            endpoint=self.endpoint,
            model=self.model,
            secret=[ray.put(_Secret(secret))] if secret else None,
            limits=self.limits,
            concurrency=self.concurrency_per_worker,
            max_retries=self.max_retries,
            timeout=self.timeout,
            preprocess=self.preprocess,
            postprocess=self.postprocess,
            key=self.key,
            ledger=ledger_actor(),  # found or made once here, not by every worker
            id_column=self.id_column,
            progress=progress_actor() if self.progress else None,
        )
        total = _known_count(dataset)
        if resume_from is not None:
            answered = answered_ids(resume_from, self.id_column or "custom_id")
            if answered:
                dataset = dataset.filter(_NotAnswered(ray.put(answered), spec))
                total = None  # how many rows the filter leaves is known only after it
        if self._watcher is not None:
            self._watcher.stop()  # one line at a time: the newest job's
        self._watcher = None
        if spec.progress is not None:
            self._watcher = Watcher(spec.progress, total=total).start()
        return dataset.map_batches(
            _Worker,
            fn_constructor_args=(spec,),
            batch_size=self.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=self.num_cpus,
            zero_copy_batch=True,
        )


def _known_count(dataset: Any) -> int | None:
    """The Dataset's row count where Ray knows it without running anything (from its
    metadata: items, Parquet footers), else None."""
    try:
        count = dataset._meta_count()
    except Exception:  # a private method: gone in some Ray, or not answerable
        return None
    return count if isinstance(count, int) else None


def connect(address: str | None) -> None:
    """`ray.init(address=...)`, after checking in two seconds that something listens there
    (Ray itself would retry for a minute before it gave up)."""
    import socket

    import ray

    if address not in (None, "auto", "local"):
        target = address.removeprefix("ray://")
        default = "10001" if address.startswith("ray://") else "6379"
        host, _, port = target.rpartition(":") if ":" in target else (target, "", default)
        try:
            with socket.create_connection((host, int(port)), timeout=2.0):
                pass
        except (OSError, ValueError) as error:
            raise ConnectionError(
                f"no Ray cluster answers at {address!r} ({type(error).__name__}: {error}). "
                "HINT: start one there (ray start --head), give its address as HOST:PORT "
                "(the GCS port, 6379 by default) or ray://HOST:10001, or leave address "
                "unset for a local Ray."
            ) from None
    ray.init(address=address)


class _NotAnswered:
    """Row filter for a resumed run: keep the rows whose id the earlier output lacks."""

    def __init__(self, done: Any, spec: _Spec) -> None:
        self._done = done
        self._spec = spec
        self._ids: frozenset[str] | None = None

    def __call__(self, row: Row) -> bool:
        if self._ids is None:
            import ray

            self._ids = ray.get(self._done)
        return row_id(row, self._spec) not in self._ids


def answered_ids(path: str, column: str) -> frozenset[str]:
    """The ids of rows answered (no error) in an earlier run's Parquet output."""
    import pyarrow.dataset as pads

    if not os.path.exists(path):
        return frozenset()
    table = pads.dataset(path, format="parquet").to_table(columns=[column, "error"])
    ids = table.column(column).to_pylist()
    errors = table.column("error").to_pylist()
    return frozenset(str(i) for i, e in zip(ids, errors, strict=True) if e is None)


def row_id(row: Row, spec: _Spec) -> str:
    """The row's id: its `id_column` (or `custom_id`, as in a batch file), else a hash of
    its request, which is the same on every run of the same pipeline."""
    given = row.get(spec.id_column or "custom_id")
    if given is not None:
        return str(given)
    try:
        body = request_body(row, spec)
    except Exception:
        body = row
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def request_body(row: Row, spec: _Spec) -> dict[str, Any]:
    """The request for one row: preprocess's, or the row's body/messages/prompt column."""
    if spec.preprocess is not None:
        try:
            made = spec.preprocess(row)
        except KeyError as error:
            column = error.args[0] if error.args else "?"
            raise ValueError(
                f"preprocess: the row has no column {column!r} (it has: "
                f"{', '.join(sorted(map(str, row)))}). HINT: fix the column name in "
                "preprocess, or add the column to the Dataset."
            ) from None
        except Exception as error:
            raise ValueError(f"preprocess raised {type(error).__name__}: {error}") from None
        if not isinstance(made, Mapping):
            raise ValueError(
                f"preprocess returned {type(made).__name__}, not a dict. HINT: return the "
                'request body, e.g. {"messages": [...], "max_tokens": 200}.'
            )
        body = dict(made)
    elif isinstance(row.get("body"), Mapping):
        body = dict(row["body"])
    elif isinstance(row.get("body"), str):
        body = json.loads(row["body"])
    elif row.get("messages") is not None:
        body = {"messages": list(row["messages"])}
    elif row.get("prompt") is not None:
        if spec.endpoint.endswith("embeddings"):
            body = {"input": row["prompt"]}
        else:
            body = {"messages": [{"role": "user", "content": str(row["prompt"])}]}
    else:
        raise ValueError(
            f"the row has no column 'prompt', 'messages' or 'body' (it has: "
            f"{', '.join(sorted(map(str, row)))}). HINT: pass preprocess=lambda row: "
            '{"messages": [{"role": "user", "content": row["your_column"]}]}.'
        )
    if spec.model is not None:
        body.setdefault("model", spec.model)
    return body


class _Worker:
    """One Ray Data worker: an async actor with its own engine and a leased share of the
    limit. Ray Data calls it with batches; up to 4 run at once on the actor's loop and
    share its limiter."""

    def __init__(self, spec: _Spec) -> None:
        import ray

        self.spec = spec
        self._api_key: str | None = ray.get(spec.secret[0]).reveal() if spec.secret else None
        self._limiter: surge.Limiter | None = None
        self._provider: Any = None
        self._started: float | None = None  # wall clock at the first batch, for progress
        self._429s_reported = 0

    def _open(self) -> tuple[surge.Limiter, Any]:
        if self._limiter is None:
            from surge.ray._actor_limiter import RayStore

            s = self.spec
            self._limiter = surge.Limiter(
                concurrency=s.concurrency,
                rpm=s.limits["rpm"],
                tpm=s.limits["tpm"],
                itpm=s.limits["itpm"],
                otpm=s.limits["otpm"],
                shared=RayStore(s.ledger),
                key=s.key,
            )
            self._provider = make_provider(
                s.provider, base_url=s.base_url, api_key=self._api_key,
                max_connections=s.concurrency,
            )  # fmt: skip
        return self._limiter, self._provider

    def _estimate(self, body: dict[str, Any]) -> dict[str, float]:
        inputs = estimate_input_tokens(body)
        outputs = max_output_tokens(body, provider=self.spec.provider) or 0
        return {"tokens": inputs + outputs, "input_tokens": inputs, "output_tokens": outputs}

    async def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        limiter, provider = self._open()
        if self._started is None:
            self._started = time.time()
        rows: list[Row] = batch.to_pylist()
        bodies: list[dict[str, Any] | None] = []
        errors: list[str | None] = []
        for row in rows:
            try:
                bodies.append(request_body(row, self.spec))
                errors.append(None)
            except Exception as error:
                bodies.append(None)
                errors.append(f"bad_request: {self._scrub(str(error))}")
        todo = [i for i, body in enumerate(bodies) if body is not None]

        async def call(body: dict[str, Any]) -> Any:
            return await provider.send(self.spec.endpoint, body)

        results = await surge.gather(
            call,
            [bodies[i] for i in todo],
            limiter=limiter,
            tokens=self._estimate,
            max_retries=self.spec.max_retries,
            timeout=self.spec.timeout,
        )
        responses: list[Any] = [None] * len(rows)
        usages: list[dict[str, int | None]] = [
            {"input_tokens": None, "output_tokens": None} for _ in rows
        ]
        attempts = [0] * len(rows)
        for i, result in zip(todo, results, strict=True):
            attempts[i] = result.attempts
            if result.ok and result.value is not None:
                responses[i] = result.value.body
                if result.usage is not None:
                    usages[i] = {
                        "input_tokens": result.usage.input_tokens,
                        "output_tokens": result.usage.output_tokens,
                    }
            else:
                reason = result.failure.reason if result.failure is not None else result.status
                errors[i] = f"{reason}: {self._scrub(str(result.error))}"
        texts = [_reply_text(body)[0] for body in responses]
        added = {
            "response": pa.array(
                [None if b is None else json.dumps(b, ensure_ascii=False) for b in responses],
                pa.string(),
            ),
            "text": pa.array(texts, pa.string()),
            "error": pa.array(errors, pa.string()),
            "usage": pa.array(
                usages,
                pa.struct([("input_tokens", pa.int64()), ("output_tokens", pa.int64())]),
            ),
            "attempts": pa.array(attempts, pa.int64()),
        }
        if self.spec.id_column is None and "custom_id" not in batch.column_names:
            added["custom_id"] = pa.array([row_id(row, self.spec) for row in rows], pa.string())
        table = batch
        for name, column in added.items():
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, column)
        if self.spec.postprocess is not None:
            finished = self._postprocess(table.to_pylist(), responses)
            errors = [row.get("error") for row in finished]  # postprocess may add one
            table = pa.Table.from_pylist(finished)
        self._report(errors, usages, limiter)
        return table

    def _report(
        self, errors: list[str | None], usages: list[dict[str, int | None]], limiter: Any
    ) -> None:
        """This batch's counts to the job's progress actor: one call per batch, not
        awaited (the batch does not wait on the display)."""
        if self.spec.progress is None:
            return
        seen_429s = limiter.statistics().rate_limited
        failed = sum(error is not None for error in errors)
        counts = Counts(
            done=len(errors) - failed,
            failed=failed,
            tokens=sum((u["input_tokens"] or 0) + (u["output_tokens"] or 0) for u in usages),
            rate_limited=seen_429s - self._429s_reported,
        )
        self._429s_reported = seen_429s
        self.spec.progress.add.remote(counts, self._started)

    def _postprocess(self, rows: list[Row], responses: list[Any]) -> list[Row]:
        assert self.spec.postprocess is not None
        out = []
        for row, response in zip(rows, responses, strict=True):
            view = {**row, "response": response}
            try:
                extra = self.spec.postprocess(view)
                if not isinstance(extra, Mapping):
                    raise TypeError(f"it returned {type(extra).__name__}, not a dict")
                row = {**row, **extra}
            except Exception as error:
                if row.get("error") is None:
                    row = {**row, "error": f"postprocess_error: {type(error).__name__}: {error}"}
            out.append(row)
        return out

    def _scrub(self, text: str) -> str:
        return scrub(text, self._api_key)
