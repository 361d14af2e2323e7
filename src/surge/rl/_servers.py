"""Generation on a real inference server, through the protocol that server exposes.

Two servers, each spoken exactly as its own source defines it (cited at each payload):

- **vLLM through TRL's** ``trl vllm-serve`` (:class:`VLLMServerEngine`): ``POST /generate/``
  returns ``prompt_ids``, ``completion_ids`` and ``logprobs``; weights go one parameter
  at a time, ``POST /update_named_param/`` announcing name, dtype and shape and a NCCL
  broadcast carrying the tensor, then ``POST /reset_prefix_cache/``.
- **SGLang** (:class:`SGLangEngine`): ``POST /generate`` with ``input_ids`` returns
  ``output_token_logprobs`` and the ``weight_version`` that produced each answer;
  weights go either from disk (``POST /update_weights_from_disk`` with a Hugging Face
  checkpoint folder) or over NCCL (``POST /init_weights_update_group`` once, then
  ``POST /update_weights_from_distributed`` with the names, dtypes and shapes of the
  tensors broadcast beside it).

Both engines share what makes them fit the trainer:

- ``publish`` costs the training step one copy of the weights into send buffers; a
  publisher thread pushes them while the trainer trains on. A newer publish that arrives
  while one is being pushed replaces any not yet started (only the newest matters).
- Every completion carries a version: SGLang's own ``weight_version`` of the weights that
  generated it; for TRL (which reports none) the version the server was confirmed to
  serve when the request was sent, with requests held back while a push is under way
  (TRL's per-parameter push leaves the server mixed until it ends), so lag is never
  understated.
- ``min_version`` is honoured: a batch waits until the server serves at least that
  version. Batches are pipelined: up to ``concurrency`` requests are in flight.
- The server's log-probs of the sampled tokens are the behaviour policy. They are at
  temperature 1 (vLLM's and SGLang's defaults return the model's raw log-probs), which is
  what the trainer computes, so sampling runs at temperature 1 too.
- A server that goes away (restart, reset, 5xx) is waited for, given the newest weights
  again (and a new broadcast group), and the batch is retried. SGLang also gives a
  restart away between requests (its ``weight_version`` is back to ``"default"``); TRL's
  server reports no version, so a restart that breaks no connection is noticed at the
  next weight push (its broadcast group is gone), and completions generated in between
  carry the last confirmed version.

Weights are named as the server's model expects: wrapper prefixes every key shares
(``HFCausalLM``'s ``model.``, DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``) are
stripped, and tied weights go once, under their first name (``named_parameters()``'s
choice, as TRL's own client sends them).

On a machine without CUDA the broadcast groups fall back to a gloo stand-in, which only
surge's simulator speaks (``surge sim --policy tiny``); a real server needs NCCL.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
import torch

from surge.rl._engines import OnError, OnResult, _free_port
from surge.rl._errors import TrainerStopped
from surge.rl._groups import (
    BroadcastGroup,
    GroupBroken,
    gloo_group,
    nccl_group,
    sglang_group,
)
from surge.rl._publisher import Job, Publisher
from surge.rl._rollout import Rollout, _mix
from surge.rl._task import Task
from surge.rl._weights import WeightLayout, WeightSyncStats

__all__ = ["SGLangEngine", "VLLMServerEngine", "save_hf_checkpoint", "server_names"]

_WRAPPERS = ("model.", "module.", "_orig_mod.")
_MAX_RETRIES = 8  # one batch's consecutive failures (each followed by a resync) before giving up
Backend = Literal["nccl", "gloo"]


def server_names(names: list[str]) -> dict[str, str]:
    """Trainer name -> the server model's name: wrapper prefixes shared by every key go.

    ``HFCausalLM(LlamaForCausalLM)`` gives ``model.model.layers.0...`` and
    ``model.lm_head.weight``; the server's Llama expects ``model.layers.0...`` and
    ``lm_head.weight``. A bare ``LlamaForCausalLM`` (whose keys do not all share
    ``model.``) is left alone.
    """
    stripped = list(names)
    while stripped:
        prefix = next((p for p in _WRAPPERS if all(n.startswith(p) for n in stripped)), None)
        if prefix is None:
            break
        stripped = [n[len(prefix) :] for n in stripped]
    return dict(zip(names, stripped, strict=True))


def save_hf_checkpoint(
    tensors: Mapping[str, torch.Tensor], directory: str | Path, *, config: Any = None
) -> Path:
    """Write ``tensors`` as a Hugging Face checkpoint folder (``model.safetensors``, plus
    ``config.json`` when a transformers config is given), atomically: a loader never
    sees a half-written file. Returns the folder."""
    from safetensors.torch import save_file

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    tmp = folder / "model.safetensors.tmp"
    save_file(cpu, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "model.safetensors")
    if config is not None and hasattr(config, "to_json_string"):
        (folder / "config.json").write_text(config.to_json_string())
    return folder


class _Unavailable(Exception):
    """The server did not answer (connection refused or reset, 5xx): wait and resync."""


def _check(resp: httpx.Response, what: str) -> Any:
    if resp.status_code >= 500:
        raise _Unavailable(f"{what}: HTTP {resp.status_code}")
    if resp.status_code != 200:
        raise TrainerStopped(
            f"{what} failed: HTTP {resp.status_code}: {resp.text[:300]}. HINT: is the server "
            "the one this engine speaks to (trl vllm-serve / SGLang), and is its model the "
            "policy's architecture?"
        )
    return resp.json()


class _ServerEngine:
    """The machinery both server engines share; subclasses speak the protocol."""

    #: False when a push leaves the server mixed until it ends (TRL): hold requests back.
    atomic_push = True

    def __init__(
        self,
        task: Task,
        *,
        base_url: str,
        group_size: int,
        seed: int,
        on_result: OnResult,
        on_error: OnError,
        concurrency: int,
        timeout: float,
        temperature: float,
        transport: httpx.BaseTransport | None,
    ) -> None:
        if temperature != 1.0:
            raise ValueError(
                f"temperature={temperature}: the trainer's log-probs are at temperature 1 and "
                "the server's returned log-probs are the model's raw ones, so other "
                "temperatures would train on a policy that did not sample. HINT: leave "
                "temperature at 1.0."
            )
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.task = task
        self.base_url = base_url.rstrip("/")
        self.group_size = group_size
        self.seed = seed
        self.temperature = temperature
        self._on_result, self._on_error = on_result, on_error
        self._concurrency, self._timeout = concurrency, timeout
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
        self._cond = threading.Condition()
        self._confirmed = -1  # the version the server is known to serve
        self._pushed: Job | None = None  # newest pushed
        self._layout: WeightLayout | None = None
        self._names: dict[str, str] = {}
        self._resync = False
        self._closed = False
        self._failed: BaseException | None = None
        self.reconnects = 0
        self._busy = 0.0
        self._publishes = 0
        self._publish_s = 0.0
        self._pushes = 0
        self._push_s = 0.0
        self._requests: asyncio.Queue[tuple[list[int], int] | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_ready = threading.Event()
        self._publisher = Publisher(
            self._cond,
            name="surge-rl-publisher",
            push=self._push_or_recover,
            on_error=self._fail,
            stopping=lambda: self._closed,
            drain_on_close=False,  # close() drops weights not yet pushed: the server is left
            connect=lambda: self._retrying(self._connect, "connecting to the server"),
            wake=lambda: self._resync,  # a server that went away comes back first
        )
        self._generator = threading.Thread(
            target=self._generate_loop, name="surge-rl-server", daemon=True
        )
        self._publisher.start()
        self._generator.start()
        self._loop_ready.wait()

    # -- what subclasses provide ------------------------------------------------------

    def _buffer_device(self, state_device: torch.device) -> torch.device:
        return torch.device("cpu")

    def _connect(self) -> None:
        """(Re)establish whatever the weight push needs (a broadcast group)."""

    def _push(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        raise NotImplementedError

    async def _request(
        self, client: httpx.AsyncClient, prompts: list[list[int]], seed: int
    ) -> list[tuple[list[int], list[float], int | None]]:
        """One batch: for every prompt, ``group_size`` (ids, log-probs, version or None)."""
        raise NotImplementedError

    def _disconnect(self) -> None:
        """Leave the broadcast group politely (best effort)."""

    # -- the trainer's side -------------------------------------------------------------

    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Copy ``state`` into send buffers and return; the publisher thread pushes it."""
        start = time.perf_counter()
        if self._layout is None:
            self._layout = WeightLayout.of(state)
            self._names = server_names([e.name for e in self._layout.entries])
        first = next(iter(state.values()))
        buffers = self._layout.pack(state, device=self._buffer_device(first.device))
        with self._cond:
            self._publisher.put((buffers, version), confirmed=self._confirmed)
            self._publishes += 1
            self._publish_s += time.perf_counter() - start

    def submit(self, tickets: list[int], min_version: int) -> None:
        assert self._loop is not None and self._requests is not None
        self._loop.call_soon_threadsafe(self._requests.put_nowait, (tickets, min_version))

    def busy_seconds(self) -> float:
        return self._busy

    def weight_stats(self) -> WeightSyncStats:
        with self._cond:
            return WeightSyncStats(
                version=self._confirmed,
                publishes=self._publishes,
                pulls=self._pushes,
                publish_seconds=self._publish_s,
                pull_seconds=self._push_s,
            )

    def in_flight_updates(self) -> int:
        return 0

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._loop is not None and self._requests is not None:
            self._loop.call_soon_threadsafe(self._requests.put_nowait, None)
        self._generator.join(timeout=self._timeout)
        self._publisher.join(timeout=self._timeout)
        with contextlib.suppress(Exception):
            self._disconnect()
        self._http.close()

    # -- the publisher thread -----------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._failed is not None or self._closed:
                return
            self._failed = exc
            self._cond.notify_all()
        self._on_error(exc)

    def _push_or_recover(self, job: Job | None) -> None:
        """The newest job, or None when the server must be resynced first."""
        if job is None:
            self._recover(self._pushed)  # only this thread writes _pushed
        else:
            self._timed_push(job)

    def _timed_push(self, job: Job) -> None:
        buffers, version = job
        assert self._layout is not None
        views = self._layout.views(buffers)
        tensors = {self._names[e.name]: views[e.name] for e in self._layout.entries}
        start = time.perf_counter()
        try:
            self._push(tensors, version)
        except (_Unavailable, httpx.TransportError, GroupBroken):
            with self._cond:  # this version still has to reach the server
                self._publisher.requeue(job)
                self._resync = True
            return
        with self._cond:
            self._confirmed = max(self._confirmed, version)
            self._pushed = job
            self._pushes += 1
            self._push_s += time.perf_counter() - start
            self._cond.notify_all()

    def _recover(self, job: Job | None) -> None:
        """The server went away: wait for it, rebuild the group, push the newest weights."""
        self.reconnects += 1
        with self._cond:
            self._confirmed = -1  # a restarted server serves whatever it loaded at start
        self._retrying(self._reconnect, "reconnecting to the server")
        with self._cond:
            self._resync = False
        if job is not None:
            self._timed_push(job)

    def _reconnect(self) -> None:
        with contextlib.suppress(Exception):
            self._disconnect()
        self._connect()

    def _retrying(self, action: Callable[[], None], what: str) -> None:
        deadline = time.monotonic() + self._timeout
        delay = 0.05
        while True:
            try:
                action()
                return
            except (_Unavailable, httpx.TransportError, GroupBroken) as exc:
                if time.monotonic() > deadline:
                    raise TrainerStopped(
                        f"{what}: no answer from {self.base_url} within {self._timeout}s "
                        f"({exc}). HINT: is the server up? Raise timeout for slow restarts."
                    ) from exc
                with self._cond:
                    if self._closed:
                        return
                    self._cond.wait(delay)
                delay = min(delay * 2, 1.0)

    # -- the generation thread ----------------------------------------------------------

    def _generate_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._requests = asyncio.Queue()
        self._loop_ready.set()
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        assert self._requests is not None
        slots = asyncio.Semaphore(self._concurrency)
        tasks: set[asyncio.Task[None]] = set()
        limits = httpx.Limits(max_connections=self._concurrency)
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=self._timeout, limits=limits
        ) as client:
            while (req := await self._requests.get()) is not None:
                await slots.acquire()
                task = asyncio.create_task(self._batch(client, *req))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _: slots.release())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _ready_for(self, min_version: int) -> bool:
        return (
            self._confirmed >= min_version
            and not self._resync
            and (self.atomic_push or not self._publisher.pushing)
        )

    async def _await_version(self, min_version: int) -> int:
        """Wait until the server serves ``>= min_version`` (and no push is mixing it)."""

        def wait() -> int:
            with self._cond:
                ok = self._cond.wait_for(
                    lambda: (
                        self._closed or self._failed is not None or self._ready_for(min_version)
                    ),
                    timeout=self._timeout,
                )
                if self._closed or self._failed is not None:
                    raise asyncio.CancelledError
                if not ok:
                    raise TrainerStopped(
                        f"the server did not reach weights version {min_version} within "
                        f"{self._timeout}s (it serves {self._confirmed}). HINT: is the "
                        "trainer publishing, and does the server accept the weights?"
                    )
                return self._confirmed

        return await asyncio.to_thread(wait)

    async def _batch(self, client: httpx.AsyncClient, tickets: list[int], min_version: int) -> None:
        import random

        try:
            prompts = [self.task.sample_prompt(random.Random(_mix(self.seed, t))) for t in tickets]
            seed = _mix(self.seed, tickets[0], len(tickets)) % (2**31)
            failures = 0
            while True:
                sent_with = await self._await_version(min_version)
                start = time.perf_counter()
                try:
                    answers = await self._request(client, prompts, seed)
                except (_Unavailable, httpx.TransportError, GroupBroken) as exc:
                    failures += 1
                    if failures > _MAX_RETRIES:
                        raise TrainerStopped(
                            f"tickets {tickets}: the server failed {failures} times in a row "
                            f"(last: {exc}). HINT: check the server's log."
                        ) from exc
                    with self._cond:
                        self._resync = True
                        self._cond.notify_all()
                    continue
                self._busy += time.perf_counter() - start
                break
            rollouts = [
                self._rollout(
                    t, p, answers[i * self.group_size : (i + 1) * self.group_size], sent_with
                )
                for i, (t, p) in enumerate(zip(tickets, prompts, strict=True))
            ]
        except asyncio.CancelledError:
            return
        except BaseException as exc:
            self._fail(exc)
            return
        self._on_result(rollouts)

    def _rollout(
        self,
        ticket: int,
        prompt: list[int],
        answers: list[tuple[list[int], list[float], int | None]],
        sent_with: int,
    ) -> Rollout:
        task, g, steps = self.task, self.group_size, self.task.max_new_tokens
        if len(answers) != g:
            raise TrainerStopped(f"the server answered {len(answers)} completions, asked {g}")
        out = torch.full((g, steps), task.pad_id, dtype=torch.long)
        logp = torch.zeros(g, steps)
        versions = torch.full((g, steps), sent_with, dtype=torch.long)
        mask = torch.zeros(g, steps, dtype=torch.bool)
        rewards = []
        for row, (ids, lps, version) in enumerate(answers):
            ids, lps = ids[:steps], lps[:steps]
            if ids:
                out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                logp[row, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
                mask[row, : len(ids)] = True
            if version is not None:
                versions[row] = version
            body = ids[:-1] if ids and ids[-1] == task.eos_id else ids
            rewards.append(task.reward(prompt, body))
        return Rollout(
            ticket=ticket,
            prompt=prompt,
            completions=out,
            mask=mask,
            behaviour_logprobs=logp,
            versions=versions,
            rewards=torch.tensor(rewards),
        )


def ids_as_text(ids: list[int]) -> str:
    """The prompt text surge's simulator reads back as token ids ("10 3 1 11")."""
    return " ".join(str(i) for i in ids)


class VLLMServerEngine(_ServerEngine):
    """Generation on vLLM behind TRL's ``trl vllm-serve``; weights over NCCL.

    Example (trainer on GPU 0, ``CUDA_VISIBLE_DEVICES=1 trl vllm-serve --model M`` on
    GPU 1)::

        tok = AutoTokenizer.from_pretrained(M)
        factory = lambda on_result, on_error: VLLMServerEngine(
            task, base_url="http://localhost:8000", group_size=8, seed=0,
            prompt_text=tok.decode, on_result=on_result, on_error=on_error)
        Trainer(policy, task, cfg, engine_factory=factory, device="cuda:0").train(100)

    ``prompt_text`` turns a task prompt into the text TRL's ``/generate/`` takes (it
    accepts text only); the engine checks that the server's ``prompt_ids`` are the task's
    prompt and stops with a hint if the tokenizer round trip changed them. ``backend``
    is ``"nccl"`` (vLLM's ``PyNcclCommunicator`` on ``device``, the default when CUDA is
    present) or ``"gloo"`` (the CPU stand-in surge's simulator speaks).
    """

    atomic_push = False

    def __init__(
        self,
        task: Task,
        *,
        base_url: str,
        group_size: int,
        seed: int,
        on_result: OnResult,
        on_error: OnError,
        prompt_text: Callable[[list[int]], str] = ids_as_text,
        group_port: int | None = None,
        backend: Backend | None = None,
        device: int = 0,
        concurrency: int = 4,
        timeout: float = 120.0,
        temperature: float = 1.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.prompt_text = prompt_text
        self.backend: Backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        self._group_port = group_port
        self._device = device
        self._group: BroadcastGroup | None = None
        self._rank = 1
        super().__init__(
            task,
            base_url=base_url,
            group_size=group_size,
            seed=seed,
            on_result=on_result,
            on_error=on_error,
            concurrency=concurrency,
            timeout=timeout,
            temperature=temperature,
            transport=transport,
        )

    def _buffer_device(self, state_device: torch.device) -> torch.device:
        return torch.device("cuda", self._device) if self.backend == "nccl" else torch.device("cpu")

    def _connect(self) -> None:
        # Order and payloads as VLLMClient.check_server / init_communicator in
        # huggingface/trl trl/extras/vllm_client.py (server: trl/scripts/vllm_serve.py).
        _check(self._http.get("/health/"), "GET /health/")
        world = int(
            _check(self._http.get("/get_world_size/"), "GET /get_world_size/")["world_size"]
        )
        self._rank = world  # the client is the last rank
        port = self._group_port or _free_port()
        host = httpx.URL(self.base_url).host
        body = {
            "host": "0.0.0.0",  # the server's workers bind the group's store here
            "port": port,
            "world_size": world + 1,
            "client_device_uuid": self._device_uuid(),
        }
        _check(self._http.post("/init_communicator/", json=body), "POST /init_communicator/")
        time.sleep(0.1)  # as TRL's client: let the server's store come up first
        if self.backend == "nccl":
            self._group = nccl_group(host, port, self._rank, world + 1, self._device)
        else:
            self._group = gloo_group(host, port, self._rank, world + 1, timeout=self._timeout)

    def _device_uuid(self) -> str:
        if self.backend == "nccl":
            return str(torch.cuda.get_device_properties(self._device).uuid)
        return "cpu"

    def _push(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        assert self._group is not None
        for name, tensor in tensors.items():
            # VLLMClient.update_named_param: announce, then broadcast from the client's
            # rank, then the group barrier.
            body = {"name": name, "dtype": str(tensor.dtype), "shape": list(tensor.shape)}
            _check(self._http.post("/update_named_param/", json=body), "POST /update_named_param/")
            self._group.broadcast(tensor, src=self._rank)
            self._group.barrier()
        _check(self._http.post("/reset_prefix_cache/"), "POST /reset_prefix_cache/")

    def _disconnect(self) -> None:
        if self._group is not None:
            self._group.close()
            self._group = None
            with contextlib.suppress(httpx.TransportError):
                self._http.post("/close_communicator/")

    async def _request(
        self, client: httpx.AsyncClient, prompts: list[list[int]], seed: int
    ) -> list[tuple[list[int], list[float], int | None]]:
        task = self.task
        # GenerateRequest of trl/scripts/vllm_serve.py; generation_kwargs go to vLLM's
        # SamplingParams as they are.
        body = {
            "prompts": [self.prompt_text(p) for p in prompts],
            "n": self.group_size,
            "repetition_penalty": 1.0,
            "temperature": self.temperature,
            "top_p": 1.0,
            "top_k": -1,
            "min_p": 0.0,
            "max_tokens": task.max_new_tokens,
            "truncate_prompt_tokens": None,
            "guided_decoding_regex": None,
            "generation_kwargs": {"seed": seed, "stop_token_ids": [task.eos_id]},
        }
        data = _check(await client.post("/generate/", json=body), "POST /generate/")
        for sent, got in zip(prompts, data["prompt_ids"], strict=True):
            if list(got) != list(sent):
                raise TrainerStopped(
                    f"the server tokenized the prompt {sent} as {list(got)}. HINT: pass a "
                    "prompt_text that round-trips through the server's tokenizer."
                )
        return [
            ([int(t) for t in ids], [float(x) if x is not None else 0.0 for x in lps], None)
            for ids, lps in zip(data["completion_ids"], data["logprobs"], strict=True)
        ]


class SGLangEngine(_ServerEngine):
    """Generation on an SGLang server; weights from disk or over NCCL.

    ``weights="disk"`` saves each published version as a Hugging Face checkpoint folder
    under ``directory`` (``model.safetensors``; ``config.json`` when ``hf_config`` is
    given) and posts ``/update_weights_from_disk``; the server must share the filesystem.
    ``weights="distributed"`` joins SGLang's weight-update group once (the trainer is
    rank 0 and hosts the rendezvous on ``group_port``) and broadcasts each version
    (NCCL; gloo against surge's simulator). Every answer carries the server's own
    ``weight_version``, so each completion is tagged with the weights that generated it.
    """

    def __init__(
        self,
        task: Task,
        *,
        base_url: str,
        group_size: int,
        seed: int,
        on_result: OnResult,
        on_error: OnError,
        weights: Literal["disk", "distributed"] = "disk",
        directory: str | Path | None = None,
        hf_config: Any = None,
        keep_checkpoints: int = 2,
        group_port: int | None = None,
        backend: Backend | None = None,
        server_ranks: int = 1,
        concurrency: int = 4,
        timeout: float = 120.0,
        temperature: float = 1.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if weights not in ("disk", "distributed"):
            raise ValueError(f"weights={weights!r}. HINT: 'disk' or 'distributed'.")
        if weights == "disk" and directory is None:
            raise ValueError(
                "weights='disk' needs directory=, a folder the SGLang server can read. "
                "HINT: a path on a filesystem both machines share."
            )
        self.weights = weights
        self.directory = Path(directory) if directory is not None else None
        self.hf_config = hf_config
        self.keep_checkpoints = max(1, keep_checkpoints)
        self.backend: Backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        self._group_port = group_port
        self._server_ranks = server_ranks
        self._group: BroadcastGroup | None = None
        self._group_name = "weight_update_group"
        super().__init__(
            task,
            base_url=base_url,
            group_size=group_size,
            seed=seed,
            on_result=on_result,
            on_error=on_error,
            concurrency=concurrency,
            timeout=timeout,
            temperature=temperature,
            transport=transport,
        )

    def _buffer_device(self, state_device: torch.device) -> torch.device:
        if self.weights == "distributed" and self.backend == "nccl":
            return state_device
        return torch.device("cpu")

    def _connect(self) -> None:
        _check(self._http.get("/health"), "GET /health")
        if self.weights != "distributed":
            return
        port = self._group_port or _free_port()
        host = httpx.URL(self.base_url).host
        world = self._server_ranks + 1
        # InitWeightsUpdateGroupReqInput in sgl-project/sglang
        # python/sglang/srt/managers/io_struct.py; the server joins at rank_offset.
        body = {
            "master_address": host,
            "master_port": port,
            "rank_offset": 1,
            "world_size": world,
            "group_name": self._group_name,
            "backend": self.backend,
        }
        # The server blocks in the rendezvous until we join it: post from a thread.
        answer: dict[str, Any] = {}

        def post() -> None:
            try:
                answer["json"] = _check(
                    self._http.post("/init_weights_update_group", json=body),
                    "POST /init_weights_update_group",
                )
            except BaseException as exc:
                answer["error"] = exc

        poster = threading.Thread(target=post, daemon=True)
        poster.start()
        self._group = sglang_group(
            host, port, world, self._group_name, backend=self.backend, timeout=self._timeout
        )
        poster.join(self._timeout)
        if "error" in answer:
            raise answer["error"]
        if not answer.get("json", {}).get("success", False):
            raise TrainerStopped(f"SGLang refused the weight group: {answer.get('json')}")

    def _push(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        if self.weights == "disk":
            self._push_disk(tensors, version)
        else:
            self._push_distributed(tensors, version)

    def _push_disk(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        assert self.directory is not None
        folder = save_hf_checkpoint(
            tensors, self.directory / f"weights-v{version}", config=self.hf_config
        )
        # UpdateWeightFromDiskReqInput: model_path, load_format, abort_all_requests,
        # weight_version (io_struct.py).
        body = {
            "model_path": str(folder),
            "load_format": None,
            "abort_all_requests": False,
            "weight_version": str(version),
        }
        answer = _check(
            self._http.post("/update_weights_from_disk", json=body),
            "POST /update_weights_from_disk",
        )
        if not answer.get("success", False):
            raise TrainerStopped(f"SGLang did not load {folder}: {answer.get('message')}")
        self._prune(version)

    def _prune(self, version: int) -> None:
        assert self.directory is not None
        for old in self.directory.glob("weights-v*"):
            with contextlib.suppress(ValueError, OSError):
                if int(old.name[len("weights-v") :]) <= version - self.keep_checkpoints:
                    for f in old.iterdir():
                        f.unlink()
                    old.rmdir()

    def _push_distributed(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        assert self._group is not None
        # UpdateWeightsFromDistributedReqInput (io_struct.py): the server receives the
        # tensors in ``names`` order from rank 0 while this request is open.
        body = {
            "names": list(tensors),
            "dtypes": [str(t.dtype).removeprefix("torch.") for t in tensors.values()],
            "shapes": [list(t.shape) for t in tensors.values()],
            "group_name": self._group_name,
            "flush_cache": True,
            "abort_all_requests": False,
            "weight_version": str(version),
        }
        answer: dict[str, Any] = {}

        def post() -> None:
            try:
                answer["json"] = _check(
                    self._http.post("/update_weights_from_distributed", json=body),
                    "POST /update_weights_from_distributed",
                )
            except BaseException as exc:
                answer["error"] = exc

        poster = threading.Thread(target=post, daemon=True)
        poster.start()
        for tensor in tensors.values():
            self._group.broadcast(tensor, src=0)
        poster.join(self._timeout)
        if "error" in answer:
            raise answer["error"]
        if not answer.get("json", {}).get("success", False):
            raise TrainerStopped(f"SGLang did not take the weights: {answer.get('json')}")

    def _disconnect(self) -> None:
        if self._group is not None:
            self._group.close()
            self._group = None

    async def _request(
        self, client: httpx.AsyncClient, prompts: list[list[int]], seed: int
    ) -> list[tuple[list[int], list[float], int | None]]:
        task = self.task
        # GenerateReqInput (io_struct.py): a batch of token-id prompts, one entry per
        # sample; output_token_logprobs are [logprob, token_id, text] triples.
        body = {
            "input_ids": [p for p in prompts for _ in range(self.group_size)],
            "sampling_params": {
                "temperature": self.temperature,
                "max_new_tokens": task.max_new_tokens,
                "stop_token_ids": [task.eos_id],
            },
            "return_logprob": True,
        }
        data = _check(await client.post("/generate", json=body), "POST /generate")
        out = []
        for item in data if isinstance(data, list) else [data]:
            meta = item["meta_info"]
            pairs = meta["output_token_logprobs"]
            raw = meta.get("weight_version")
            try:
                version = int(raw) if raw is not None else None
            except (TypeError, ValueError):  # "default": it never got our weights
                version = None
            if raw is not None and version is None and self._confirmed >= 0:
                # The server forgot the weights it was given: it restarted between two
                # requests. Give it them again and ask again; never tag these tokens.
                raise _Unavailable(f"the server serves weight_version {raw!r}: restarted")
            out.append(([int(p[1]) for p in pairs], [float(p[0]) for p in pairs], version))
        return out
