"""Generation engines: where the generator runs and how weights reach it.

An engine takes tickets to generate (``submit``), hands finished rollouts to a callback,
and receives weights (``publish``). The trainer does not know which engine it drives:

- :class:`ThreadEngine`: a generator thread in this process with its own copy of the
  model on its own ``device`` and :class:`~surge.rl.InProcessWeightSync` (on one GPU the
  snapshot never leaves the device). PyTorch releases the GIL inside ops, so this
  overlaps for models whose ops are large next to Python's per-op overhead.
- :class:`ProcessEngine`: a generator in its own process (its own interpreter, its own
  share of the cores or its own GPU), weights pushed with ``torch.distributed``
  point-to-point sends: NCCL when the trainer and the generator are on two different
  GPUs, gloo otherwise. This is what overlaps on a small CPU, and the shape of a real
  deployment (generator and trainer on separate devices).
"""

from __future__ import annotations

import copy
import datetime
import pickle
import queue
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from surge.rl._device import Device, resolve_device
from surge.rl._errors import TrainerStopped, WeightSyncTimeout
from surge.rl._rollout import Generator, Rollout, rollout_from_dict, rollout_to_dict
from surge.rl._task import Task
from surge.rl._weights import InProcessWeightSync, WeightLayout, WeightSyncStats

__all__ = ["DistributedWeightSync", "Engine", "ProcessEngine", "ThreadEngine"]

OnResult = Callable[[list[Rollout]], None]
OnError = Callable[[BaseException], None]


class Engine(Protocol):
    """What the trainer needs from a generation engine."""

    def submit(self, tickets: list[int], min_version: int) -> None: ...

    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> None: ...

    def busy_seconds(self) -> float: ...

    def weight_stats(self) -> WeightSyncStats: ...

    def in_flight_updates(self) -> int: ...

    def close(self) -> None: ...


class ThreadEngine:
    """Generator in a thread of this process; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        *,
        group_size: int,
        seed: int,
        threads: int,
        in_flight_weight_updates: bool,
        timeout: float,
        on_result: OnResult,
        on_error: OnError,
        device: Device | None = None,
    ) -> None:
        self.device = resolve_device(device, what="generator device")
        self.sync = InProcessWeightSync()
        self._model = copy.deepcopy(model).to(self.device).eval()
        self._gen = Generator(
            self._model,
            task,
            group_size=group_size,
            seed=seed,
            refresh=lambda mv: self.sync.pull(
                self._model, have=self._gen.version, min_version=mv, timeout=timeout
            ),
            in_flight_weight_updates=in_flight_weight_updates,
        )
        self._requests: queue.Queue[tuple[list[int], int] | None] = queue.Queue()
        self._threads = threads
        self._on_result, self._on_error = on_result, on_error
        self._thread = threading.Thread(target=self._loop, name="surge-rl-generator", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        torch.set_num_threads(self._threads)
        while (req := self._requests.get()) is not None:
            try:
                rollouts = self._gen.generate(req[0], min_version=req[1])
            except BaseException as exc:
                self._on_error(exc)
                return
            self._on_result(rollouts)

    def submit(self, tickets: list[int], min_version: int) -> None:
        self._requests.put((tickets, min_version))

    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        self.sync.publish(state, version)

    def busy_seconds(self) -> float:
        return self._gen.busy_seconds

    def weight_stats(self) -> WeightSyncStats:
        return self.sync.statistics()

    def in_flight_updates(self) -> int:
        return self._gen.weight_updates_in_flight

    def close(self) -> None:
        stop_worker(self._requests, self._thread)


class DistributedWeightSync:
    """Weight sync across processes with ``torch.distributed`` point-to-point messages.

    Both ends share one :class:`~surge.rl.WeightLayout`: the sender packs the state into
    the layout's flat buffers (one per dtype and bucket, tied weights once, every dtype
    kept) and ``isend``s them; the version travels ahead of them on an ordinary queue, so
    the receiver knows buffers are coming and can check for new weights between two
    tokens without blocking. A receiver loads buffers only once they have all arrived,
    so the model is never half updated. ``device`` is where the buffers live: the CPU for
    gloo, each end's CUDA device for NCCL.
    """

    def __init__(
        self,
        layout: WeightLayout | Mapping[str, torch.Tensor],
        *,
        peer: int,
        device: Device = "cpu",
    ) -> None:
        self.peer = peer
        self.layout = layout if isinstance(layout, WeightLayout) else WeightLayout.of(layout)
        self.device = torch.device(device)
        self._bufs: list[torch.Tensor] | None = None  # receive buffers, made on first use
        self._pending: list[tuple[list[Any], list[torch.Tensor]]] = []
        self.version = -1
        self.publishes = 0
        self.pulls = 0
        self.publish_seconds = 0.0
        self.pull_seconds = 0.0

    def send(self, state: Mapping[str, torch.Tensor]) -> None:
        """Sender side: start sending ``state``; returns before the receiver has it.

        Costs the caller one copy into fresh send buffers; the transfer runs behind it.
        """
        start = time.perf_counter()
        flat = self.layout.pack(state, device=self.device)
        self._pending = [(w, b) for w, b in self._pending if not all(x.is_completed() for x in w)]
        self._pending.append(([dist.isend(b, dst=self.peer) for b in flat], flat))
        self.publishes += 1
        self.publish_seconds += time.perf_counter() - start

    def wait_sent(self) -> None:
        for works, _ in self._pending:
            for work in works:
                work.wait()
        self._pending.clear()

    def receive(self, version: int) -> None:
        """Receiver side: block until the announced buffers have arrived."""
        start = time.perf_counter()
        if self._bufs is None:
            self._bufs = self.layout.empty(self.device)
        for buf in self._bufs:
            dist.recv(buf, src=self.peer)
        self.version = version
        self.pull_seconds += time.perf_counter() - start
        self.pulls += 1

    def load_into(self, model: nn.Module) -> None:
        if self._bufs is None:
            return
        start = time.perf_counter()
        self.layout.load_into(model, self._bufs)
        self.pull_seconds += time.perf_counter() - start


def stop_worker(requests: queue.Queue[Any], thread: threading.Thread) -> None:
    """Drop the requests a worker thread has not started, tell it to stop, wait for it."""
    while True:
        try:
            requests.get_nowait()
        except queue.Empty:
            break
    requests.put(None)
    thread.join()


def _pack(rollouts: list[Rollout]) -> bytes:
    """Rollouts as bytes: tensors as numpy arrays in a plain pickle.

    Not torch's shared-memory handles (they die with the sender), and not ``torch.save``,
    whose zip container costs ~2 ms a batch to read: time the trainer's process would
    spend holding the GIL beside the training step.
    """
    plain = [
        {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in rollout_to_dict(r).items()}
        for r in rollouts
    ]
    return pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)


def _unpack(data: bytes) -> list[Rollout]:
    # Trusted bytes: written by our own generator process, as multiprocessing's own
    # queues are.
    return [
        rollout_from_dict(
            {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in d.items()}
        )
        for d in pickle.loads(data)
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _process_main(
    model: nn.Module,
    task: Task,
    group_size: int,
    seed: int,
    threads: int,
    in_flight: bool,
    timeout: float,
    init_method: str,
    inbox: Any,
    outbox: Any,
    layout: WeightLayout,
    device: str,
    backend: str,
) -> None:
    """Generator process: read weights and requests from ``inbox`` in order, generate."""
    torch.set_num_threads(threads)
    where = torch.device(device)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    outbox.put(("ready", None, None))
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=1,
        world_size=2,
        device_id=where if backend == "nccl" else None,
    )
    model.to(where).eval()
    wsync = DistributedWeightSync(layout, peer=0, device=where if backend == "nccl" else "cpu")
    pending: deque[tuple[list[int], int]] = deque()
    stopping = False
    loaded = -1

    def poll(block: bool, wait: float | None = None) -> bool:
        nonlocal stopping
        try:
            msg = inbox.get(block=block, timeout=wait)
        except queue.Empty:
            return False
        if msg is None:
            stopping = True
        elif msg[0] == "weights":
            wsync.receive(msg[1])
        else:
            pending.append((msg[1], msg[2]))
        return True

    def refresh(min_version: int) -> int:
        nonlocal loaded
        while poll(block=False):
            pass
        deadline = time.monotonic() + timeout
        while wsync.version < min_version and not stopping:
            left = deadline - time.monotonic()
            if left <= 0 or not poll(block=True, wait=left):
                raise WeightSyncTimeout(f"no weights >= {min_version} within {timeout}s")
        if wsync.version > loaded:
            wsync.load_into(model)
            loaded = wsync.version
        return loaded

    gen = Generator(
        model,
        task,
        group_size=group_size,
        seed=seed,
        refresh=refresh,
        in_flight_weight_updates=in_flight,
    )
    try:
        while not stopping:
            if not pending:
                poll(block=True)
                continue
            tickets, min_version = pending.popleft()
            rollouts = gen.generate(tickets, min_version=min_version)
            stats = (
                gen.busy_seconds,
                wsync.pulls,
                wsync.pull_seconds,
                gen.weight_updates_in_flight,
            )
            outbox.put(("ok", _pack(rollouts), stats))
    except BaseException:
        outbox.put(("error", traceback.format_exc(), None))
    finally:
        while not stopping:  # drain announced weights so the sender's sends complete
            poll(block=True, wait=timeout)
        outbox.put(("closed", None, None))
        dist.destroy_process_group()


class ProcessEngine:
    """Generator in its own process; weights over ``torch.distributed``.

    ``device`` is the generator's (default: CUDA when present); the backend is NCCL when
    it and the trainer's weights are on two different CUDA devices, gloo otherwise (NCCL
    cannot send from a GPU to itself, so one shared GPU goes through host buffers). Initialises the default
    process group of this process (rank 0 of 2) for its lifetime, so it cannot be used
    inside a job that already set one up.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        *,
        group_size: int,
        seed: int,
        threads: int,
        in_flight_weight_updates: bool,
        timeout: float,
        on_result: OnResult,
        on_error: OnError,
        device: Device | None = None,
    ) -> None:
        if dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is already initialised in this process. "
                "HINT: use engine='thread' inside distributed jobs."
            )
        self.device = resolve_device(device, what="generator device")
        state = model.state_dict()
        layout = WeightLayout.of(state)
        source = next(iter(state.values())).device if state else torch.device("cpu")
        # NCCL between two GPUs; gloo otherwise (NCCL cannot send from a device to itself,
        # so two processes sharing one GPU go through host buffers).
        two_gpus = source.type == "cuda" and self.device.type == "cuda" and source != self.device
        self.backend = "nccl" if two_gpus else "gloo"
        if self.device.type == "meta":
            raise ValueError(
                "a generator process cannot sample on the 'meta' device. HINT: use 'cpu' or 'cuda'."
            )
        ctx = mp.get_context("spawn")
        self._inbox: Any = ctx.Queue()
        self._outbox: Any = ctx.Queue()
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        self._proc = ctx.Process(
            target=_process_main,
            args=(
                copy.deepcopy(model).cpu(),
                task,
                group_size,
                seed,
                threads,
                in_flight_weight_updates,
                timeout,
                init_method,
                self._inbox,
                self._outbox,
                layout,
                str(self.device),
                self.backend,
            ),
            name="surge-rl-generator",
            daemon=True,
        )
        self._proc.start()
        self._await_ready(timeout)
        dist.init_process_group(
            self.backend,
            init_method=init_method,
            rank=0,
            world_size=2,
            timeout=datetime.timedelta(seconds=timeout),
            # NCCL binds to the trainer's GPU, not whatever device is current
            device_id=source if self.backend == "nccl" else None,
        )
        # gloo sends from the CPU: the trainer's GPU weights are packed straight into
        # host buffers (the one copy publish costs); NCCL sends from the trainer's GPU.
        self._wsync = DistributedWeightSync(
            layout, peer=1, device=source if self.backend == "nccl" else "cpu"
        )
        self._on_result, self._on_error = on_result, on_error
        self._busy = 0.0
        self._pulls = 0
        self._pull_s = 0.0
        self._inflight_updates = 0
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="surge-rl-results", daemon=True)
        self._reader.start()

    def _await_ready(self, timeout: float) -> None:
        """Wait until the generator process runs, so a child that dies while starting is
        reported now, not as a rendezvous timeout minutes later."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._outbox.get(timeout=0.2)
                return
            except queue.Empty:
                if not self._proc.is_alive():
                    raise TrainerStopped(
                        f"the generator process exited while starting (exit code "
                        f"{self._proc.exitcode}); its error is printed above. HINT: a "
                        "script that uses engine='process' must start training under "
                        '`if __name__ == "__main__":` (the process is spawned and '
                        "re-imports the script)."
                    ) from None
        self._proc.kill()
        raise TrainerStopped(f"the generator process did not start within {timeout}s")

    def _read(self) -> None:
        while True:
            try:
                kind, payload, stats = self._outbox.get(timeout=1.0)
            except queue.Empty:
                if not self._proc.is_alive():
                    self._on_error(TrainerStopped(f"generator exited ({self._proc.exitcode})"))
                    return
                continue
            if kind == "closed":
                self._closed.set()
                return
            if kind == "error":
                self._on_error(TrainerStopped(f"generator process failed:\n{payload}"))
                continue
            self._busy, self._pulls, self._pull_s, self._inflight_updates = stats
            self._on_result(_unpack(payload))

    def submit(self, tickets: list[int], min_version: int) -> None:
        self._inbox.put(("generate", tickets, min_version))

    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        self._wsync.send(state)
        self._inbox.put(("weights", version))
        self._wsync.version = version

    def busy_seconds(self) -> float:
        return self._busy

    def weight_stats(self) -> WeightSyncStats:
        return WeightSyncStats(
            version=self._wsync.version,
            publishes=self._wsync.publishes,
            pulls=self._pulls,
            publish_seconds=self._wsync.publish_seconds,
            pull_seconds=self._pull_s,
        )

    def in_flight_updates(self) -> int:
        return self._inflight_updates

    def close(self) -> None:
        self._inbox.put(None)
        while self._proc.is_alive() and not self._closed.wait(timeout=0.5):
            pass
        self._reader.join(timeout=5)
        if self._closed.is_set():  # a dead peer would never complete the sends
            self._wsync.wait_sent()
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()
        dist.destroy_process_group()
