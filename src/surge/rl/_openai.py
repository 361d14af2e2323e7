"""Generation on an OpenAI-compatible server (vLLM, SGLang), driven by surge's own engine.

Each ticket becomes one ``/v1/completions`` request: the prompt as token ids, ``n`` =
group size, ``logprobs`` for the behaviour policy, and ``return_tokens_as_token_ids`` so
the completion comes back as ids (vLLM's spelling). Requests go through
:func:`surge.gather`, so concurrency caps, retries and timeouts are the same ones the rest
of surge uses.

Weights travel through a *pusher*: a callable that makes the server load a state dict and
returns once it serves it, for servers whose weight endpoint is your own. For TRL's
``trl vllm-serve`` and for SGLang use :class:`~surge.rl.VLLMServerEngine` and
:class:`~surge.rl.SGLangEngine`, which speak those servers' own weight protocols;
:func:`disk_weight_pusher` covers the save-to-disk-then-POST kind.

``publish`` copies the weights into a send buffer and returns; a publisher thread calls
the pusher (a newer publish replaces one not yet started). Tokens carry the version the
server was confirmed to serve when the request was sent, and a batch is sent only once
that version reaches the batch's ``min_version``: a server swaps weights between its
own scheduler steps, so the true version of a token may be newer, never older, and lag
measured this way is an upper bound.
"""

from __future__ import annotations

import asyncio
import functools
import io
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import torch

import surge
from surge.rl._engines import OnError, OnResult, stop_worker
from surge.rl._errors import TrainerStopped
from surge.rl._publisher import Job, Publisher
from surge.rl._rollout import Rollout, _mix
from surge.rl._task import Task
from surge.rl._weights import WeightLayout, WeightSyncStats

__all__ = ["OpenAIEngine", "WeightPusher", "disk_weight_pusher"]

WeightPusher = Callable[[Mapping[str, torch.Tensor], int], None]


def disk_weight_pusher(
    url: str, directory: str | Path, *, client: httpx.Client | None = None
) -> WeightPusher:
    """A pusher that saves the weights under ``directory`` and POSTs their path to ``url``.

    The file is a ``torch.save`` state dict (``weights-v{version}.pt``) and the body is
    ``{"model_path": ..., "version": ...}``, for a server endpoint of your own; the server
    must answer 2xx once it serves the new weights. (SGLang's ``update_weights_from_disk``
    wants a Hugging Face checkpoint folder: :class:`~surge.rl.SGLangEngine` writes one.)
    """
    directory = Path(directory)
    http = client or httpx.Client(timeout=600)

    def push(state: Mapping[str, torch.Tensor], version: int) -> None:
        path = directory / f"weights-v{version}.pt"
        buf = io.BytesIO()
        torch.save(dict(state), buf)
        path.write_bytes(buf.getvalue())
        http.post(url, json={"model_path": str(path), "version": version}).raise_for_status()

    return push


def _token_id(entry: Any) -> int:
    """vLLM returns ``"token_id:123"`` with return_tokens_as_token_ids; accept ints too."""
    if isinstance(entry, int):
        return entry
    text = str(entry)
    return int(text.split(":", 1)[1]) if text.startswith("token_id:") else int(text)


class OpenAIEngine:
    """Generation engine backed by an OpenAI-compatible completions endpoint.

    Example::

        engine = OpenAIEngine(task, base_url="http://localhost:8000/v1", model="policy",
                              group_size=8, seed=0, push_weights=my_pusher,
                              on_result=..., on_error=...)

    ``Trainer(..., engine_factory=...)`` builds it with the trainer's callbacks.
    """

    def __init__(
        self,
        task: Task,
        *,
        base_url: str,
        model: str,
        group_size: int,
        seed: int,
        push_weights: WeightPusher,
        on_result: OnResult,
        on_error: OnError,
        concurrency: int = 64,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
        temperature: float = 1.0,
    ) -> None:
        self.task = task
        self.base_url = base_url.rstrip("/")
        self.model_name = model
        self.group_size = group_size
        self.seed = seed
        self.temperature = temperature
        self._push = push_weights
        self._on_result, self._on_error = on_result, on_error
        self._concurrency, self._timeout, self._transport = concurrency, timeout, transport
        self._version = -1  # confirmed: the server serves it
        self._lock = threading.Condition()
        self._layout: WeightLayout | None = None
        self._closing = False
        self._busy = 0.0
        self._publishes = 0
        self._publish_s = 0.0
        self._pushes = 0
        self._push_s = 0.0
        self._requests: queue.Queue[tuple[list[int], int] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="surge-rl-openai", daemon=True)
        self._thread.start()
        self._publisher = Publisher(
            self._lock,
            name="surge-rl-openai-publisher",
            push=self._timed_push,
            on_error=self._on_error,
            stopping=lambda: self._closing,
            drain_on_close=True,  # close() promises the newest weights reach the server
        )
        self._publisher.start()

    def _loop(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        async with httpx.AsyncClient(timeout=self._timeout, transport=self._transport) as client:
            while True:
                req = await asyncio.to_thread(self._requests.get)
                if req is None:
                    return
                tickets, min_version = req
                # send only once the server serves what the bound needs
                version = await asyncio.to_thread(self._wait_version, min_version)
                if version < min_version:
                    if self._closing:
                        return
                    self._on_error(
                        TrainerStopped(
                            f"the server did not reach weights version {min_version} within "
                            f"{self._timeout}s. HINT: does the pusher succeed?"
                        )
                    )
                    return
                start = time.perf_counter()
                try:
                    results = await surge.gather(
                        functools.partial(self._complete, client, version=version),
                        tickets,
                        concurrency=self._concurrency,
                    )
                    values = results.raise_for_failures().values()
                    rollouts = [r for r in values if r is not None]
                except BaseException as exc:
                    self._on_error(exc)
                    return
                self._busy += time.perf_counter() - start
                self._on_result(rollouts)

    def _wait_version(self, min_version: int) -> int:
        with self._lock:
            self._lock.wait_for(
                lambda: self._version >= min_version or self._closing, self._timeout
            )
            return self._version

    async def _complete(self, client: httpx.AsyncClient, ticket: int, *, version: int) -> Rollout:
        import random

        task, g = self.task, self.group_size
        prompt = task.sample_prompt(random.Random(_mix(self.seed, ticket)))
        body = {
            "model": self.model_name,
            "prompt": prompt,
            "max_tokens": task.max_new_tokens,
            "n": g,
            "temperature": self.temperature,
            "logprobs": 0,
            "seed": _mix(self.seed, ticket) % (2**31),
            "stop_token_ids": [task.eos_id],
            "include_stop_str_in_output": True,
            "return_tokens_as_token_ids": True,
        }
        resp = await client.post(f"{self.base_url}/completions", json=body)
        resp.raise_for_status()
        choices = sorted(resp.json()["choices"], key=lambda c: c["index"])
        steps = task.max_new_tokens
        out = torch.full((g, steps), task.pad_id, dtype=torch.long)
        logp = torch.zeros(g, steps)
        mask = torch.zeros(g, steps, dtype=torch.bool)
        rewards = []
        for row, choice in enumerate(choices[:g]):
            ids = [_token_id(t) for t in choice["logprobs"]["tokens"]][:steps]
            lps = [float(x) for x in choice["logprobs"]["token_logprobs"]][:steps]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            logp[row, : len(lps)] = torch.tensor(lps)
            mask[row, : len(ids)] = True
            body_ids = ids[:-1] if ids and ids[-1] == task.eos_id else ids
            rewards.append(task.reward(prompt, body_ids))
        return Rollout(
            ticket=ticket,
            prompt=prompt,
            completions=out,
            mask=mask,
            behaviour_logprobs=logp,
            versions=torch.full((g, steps), version, dtype=torch.long),
            rewards=torch.tensor(rewards),
        )

    def submit(self, tickets: list[int], min_version: int) -> None:
        self._requests.put((tickets, min_version))

    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Copy the weights into a send buffer and return; the publisher pushes them."""
        start = time.perf_counter()
        if self._layout is None:
            self._layout = WeightLayout.of(state)
        buffers = self._layout.pack(state, device="cpu")
        with self._lock:
            self._publisher.put((buffers, version), confirmed=self._version)
            self._publishes += 1
            self._publish_s += time.perf_counter() - start

    def _timed_push(self, job: Job | None) -> None:
        """On the publisher thread: have the server load the job's weights."""
        assert job is not None and self._layout is not None
        buffers, version = job
        start = time.perf_counter()
        self._push(self._layout.views(buffers), version)
        with self._lock:
            self._version = version
            self._pushes += 1
            self._push_s += time.perf_counter() - start
            self._lock.notify_all()

    def busy_seconds(self) -> float:
        return self._busy

    def weight_stats(self) -> WeightSyncStats:
        with self._lock:
            return WeightSyncStats(
                version=self._version,
                publishes=self._publishes,
                pulls=self._pushes,
                publish_seconds=self._publish_s,
                pull_seconds=self._push_s,
            )

    def in_flight_updates(self) -> int:
        return 0

    def close(self) -> None:
        """Stop generating; the newest published weights still reach the server."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        stop_worker(self._requests, self._thread)
        self._publisher.join()
