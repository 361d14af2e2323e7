"""Ray placement: the generator as a pool of Ray actors, each with its own resource request.

The trainer stays in this process; generation runs in ``replicas`` Ray actors, each
created with the ``num_cpus`` / ``num_gpus`` / custom ``resources`` it asks for, so the
generators and the trainer draw on separate pools of cores or devices, on this machine
or across a cluster. Each actor runs the same :class:`~surge.rl.Generator` as the other
engines, behind an :class:`~surge.rl.InProcessWeightSync`:

- Weights: :meth:`RayEngine.publish` puts the state dict in the object store once
  (``ray.put``) and sends the reference, tagged with its version, to every replica. An
  actor fetches it on a thread of its own (a threaded actor with one concurrency group
  for weights and one for generation), so new weights land while a generation waits for
  them, or between two tokens with ``in_flight_weight_updates``. A generation never sees
  half-updated weights: the actor swaps in complete snapshots only.
- Tickets: each :meth:`~RayEngine.submit` goes to the replica with the fewest tickets
  in flight; generation is keyed by ticket, so which replica samples a ticket does not
  change the sample, and the trainer's buffer puts results back in ticket order.
- Results: a reader thread waits on the pending calls (``ray.wait``) and hands finished
  rollouts to the trainer; a failed call or a dead actor stops the trainer with
  :class:`~surge.rl.TrainerStopped` carrying the remote traceback.

Requires the ``ray`` extra (``pip install 'surge[ray]'``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from surge.rl._config import RLConfig
from surge.rl._engines import OnError, OnResult
from surge.rl._errors import TrainerStopped
from surge.rl._rollout import Generator, Rollout
from surge.rl._task import Task
from surge.rl._weights import InProcessWeightSync, WeightSyncStats

__all__ = ["RayEngine"]

# Options the engine sets itself: passing them through ``options`` would be ambiguous.
_OWN_OPTIONS = frozenset(
    {"num_cpus", "num_gpus", "resources", "max_concurrency", "concurrency_groups"}
)
_WEIGHTS, _GENERATE = "weights", "generate"


def _import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise ImportError(
            "RayEngine needs Ray. HINT: pip install 'surge[ray]' (or pip install 'ray>=2.40')."
        ) from exc


def _actor_device() -> torch.device:
    """The GPU Ray assigned to this actor, else the CPU.

    Ray sets ``CUDA_VISIBLE_DEVICES`` to the actor's GPUs, so the first assigned GPU is
    ``cuda:0`` inside the actor whichever physical GPU it is.
    """
    try:
        assigned = _import_ray().get_gpu_ids()
    except Exception:  # not inside a Ray worker (a direct call in a test)
        assigned = []
    if assigned and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


class _GeneratorActor:
    """Body of one generator actor: a :class:`Generator` and an in-process weight sync.

    Runs as a threaded actor with two concurrency groups of one thread each, so
    ``load`` (weights) and ``generate`` run concurrently, each in call order.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        group_size: int,
        seed: int,
        threads: int,
        in_flight: bool,
        timeout: float,
    ) -> None:
        torch.set_num_threads(threads)
        self.device = _actor_device()
        # Own copy: with RAY_ENABLE_ZERO_COPY_TORCH_TENSORS the tensors Ray hands over are
        # read-only views of the object store, and weight loads write into the model.
        self._model = copy.deepcopy(model).to(self.device).eval()
        self._sync = InProcessWeightSync()
        self._timeout = timeout
        self._fetch_s = 0.0
        self._gen = Generator(
            self._model,
            task,
            group_size=group_size,
            seed=seed,
            refresh=self._refresh,
            in_flight_weight_updates=in_flight,
        )

    def _refresh(self, min_version: int) -> int:
        return self._sync.pull(
            self._model, have=self._gen.version, min_version=min_version, timeout=self._timeout
        )

    def ready(self) -> str:
        """The device this replica samples on (the caller waits for this answer)."""
        return str(self.device)

    def load(self, box: list[Any], version: int) -> None:
        """Fetch the weights behind ``box[0]`` (an object ref) and make them the newest.

        The ref comes inside a list so Ray does not resolve it before the call: the fetch
        is then part of the measured pull time.
        """
        start = time.perf_counter()
        state = _import_ray().get(box[0])
        if version > self._sync.latest_version():  # an older push arriving late is moot
            self._sync.publish(state, version)
        self._fetch_s += time.perf_counter() - start

    def generate(
        self, tickets: list[int], min_version: int
    ) -> tuple[list[Rollout], tuple[float, int, float, int]]:
        rollouts = self._gen.generate(tickets, min_version=min_version)
        ws = self._sync.statistics()
        stats = (
            self._gen.busy_seconds,
            ws.pulls,
            ws.pull_seconds + self._fetch_s,
            self._gen.weight_updates_in_flight,
        )
        return rollouts, stats


class RayEngine:
    """Generator as a pool of Ray actors with their own resource requests.

    See the module docstring for how weights and tickets travel. Most users build it
    through :meth:`factory`::

        import ray
        from surge.rl import RayEngine, RLConfig, Trainer

        ray.init()  # or let the engine call it
        cfg = RLConfig(mode="async", max_staleness=2, trainer_threads=8)
        trainer = Trainer(
            model, task, cfg,
            engine_factory=RayEngine.factory(model, task, cfg, replicas=2, num_gpus=1),
        )
        trainer.train(100)

    ``num_cpus``, ``num_gpus`` and ``resources`` are the Ray resource request of *each*
    replica; ``options`` goes to ``ActorClass.options`` as is (``runtime_env``,
    ``scheduling_strategy``, ``placement_group``...). ``threads`` are the intra-op
    threads of each actor (default: ``num_cpus``, at least 1). Ray is started with
    ``ray.init()`` if this process has not started or joined a cluster yet; stopping it
    (``ray.shutdown()``) is left to the caller. A replica with ``num_gpus > 0`` samples on
    the GPU Ray assigns it (Ray sets ``CUDA_VISIBLE_DEVICES`` in the actor; the model copy
    moves to its first visible GPU); one without samples on the CPU. :attr:`devices` says
    where each replica landed.

    To give the trainer a pool of its own as well, run the whole loop in a Ray task or
    actor with its resource request, e.g. ``ray.remote(num_gpus=1)(train_fn).remote()``;
    the engine then starts the generator actors from there.

    :meth:`busy_seconds` and the weight-pull counters are sums over replicas.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        *,
        group_size: int,
        seed: int,
        in_flight_weight_updates: bool,
        timeout: float,
        on_result: OnResult,
        on_error: OnError,
        replicas: int = 1,
        num_cpus: float = 1,
        num_gpus: float = 0,
        resources: Mapping[str, float] | None = None,
        options: Mapping[str, Any] | None = None,
        threads: int | None = None,
    ) -> None:
        _check_placement(replicas, num_cpus, num_gpus, options, threads)
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init()
        self._ray = ray
        self._on_result, self._on_error = on_result, on_error
        self._timeout = timeout
        actor_cls = ray.remote(concurrency_groups={_WEIGHTS: 1, _GENERATE: 1})(_GeneratorActor)
        opts: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        if resources:
            opts["resources"] = dict(resources)
        opts.update(options or {})
        n_threads = threads if threads is not None else max(1, int(num_cpus))
        model_ref = ray.put(copy.deepcopy(model).cpu())
        self._actors: list[Any] = [
            actor_cls.options(**opts).remote(
                model_ref,
                task,
                group_size,
                seed,
                n_threads,
                in_flight_weight_updates,
                timeout,
            )
            for _ in range(replicas)
        ]
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        # ref -> (replica, tickets); a ticket count of 0 marks a weight push
        self._pending: dict[Any, tuple[int, int]] = {}
        self._load = [0] * replicas  # tickets in flight per replica
        self._next = 0
        self._stats = [(0.0, 0, 0.0, 0)] * replicas
        self._version = -1
        self._publishes = 0
        self._publish_s = 0.0
        self.devices: list[str] = []
        """Where each replica samples: ``"cuda:0"`` (its first Ray-assigned GPU) or ``"cpu"``."""
        self._wait_ready(replicas, opts)
        self._reader = threading.Thread(target=self._read, name="surge-rl-ray", daemon=True)
        self._reader.start()

    @classmethod
    def factory(
        cls,
        model: nn.Module,
        task: Task,
        config: RLConfig,
        *,
        replicas: int = 1,
        num_cpus: float = 1,
        num_gpus: float = 0,
        resources: Mapping[str, float] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Callable[[OnResult, OnError], RayEngine]:
        """An ``engine_factory`` for :class:`~surge.rl.Trainer`; knobs as in the class.

        Group size, seed, in-flight weight updates and the timeout come from ``config``
        (pass the trainer's); ``config.generator_threads`` sets each actor's intra-op
        threads. The model is copied to the actors when a run starts, so they always
        begin from the trainer's current weights.
        """
        _check_placement(replicas, num_cpus, num_gpus, options, config.generator_threads)
        _import_ray()  # fail now, not at the first run, when Ray is missing

        def build(on_result: OnResult, on_error: OnError) -> RayEngine:
            return cls(
                model,
                task,
                group_size=config.group_size,
                seed=config.seed,
                in_flight_weight_updates=config.in_flight_weight_updates,
                timeout=config.weight_sync_timeout,
                on_result=on_result,
                on_error=on_error,
                replicas=replicas,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                resources=resources,
                options=options,
                threads=config.generator_threads,
            )

        return build

    def _wait_ready(self, replicas: int, opts: Mapping[str, Any]) -> None:
        """Block until every actor is up, so a request Ray cannot place fails here."""
        ray = self._ray
        refs = [a.ready.remote() for a in self._actors]
        try:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self._timeout)
            if len(ready) == len(refs):
                self.devices = [str(d) for d in ray.get(refs)]
            else:
                ray.get(ready)
        except Exception as exc:
            self._kill()
            raise TrainerStopped(f"a generator actor failed to start:\n{exc}") from exc
        if len(ready) < len(refs):
            self._kill()
            raise TrainerStopped(
                f"{len(refs) - len(ready)} of {replicas} generator actors did not start within "
                f"{self._timeout}s; each asks for {_describe(opts)} and the cluster has "
                f"{ray.cluster_resources()}. HINT: lower replicas, num_cpus or num_gpus, "
                "or add nodes."
            )

    def _read(self) -> None:
        ray = self._ray
        while True:
            with self._wake:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                refs = list(self._pending)
            try:
                done, _ = ray.wait(refs, num_returns=1, timeout=0.1)
            except Exception as exc:  # Ray itself went away
                self._fail(TrainerStopped(f"lost Ray while waiting for the generators: {exc}"))
                return
            for ref in done:
                with self._lock:
                    if self._closed:
                        return
                    replica, tickets = self._pending.pop(ref)
                    self._load[replica] -= tickets
                try:
                    out = ray.get(ref)
                except Exception as exc:
                    self._fail(
                        TrainerStopped(f"generator actor {replica} failed:\n{exc}"), cause=exc
                    )
                    return
                if tickets:
                    rollouts, stats = out
                    with self._lock:
                        self._stats[replica] = stats
                    self._on_result(rollouts)

    def _fail(self, error: TrainerStopped, cause: BaseException | None = None) -> None:
        if cause is not None:
            error.__cause__ = cause
        with self._lock:
            if self._closed:
                return
        self._on_error(error)

    def submit(self, tickets: list[int], min_version: int) -> None:
        if not tickets:
            return
        with self._wake:
            if self._closed:
                raise RuntimeError("submit() after close()")
            n = len(self._actors)
            # fewest tickets in flight; ties go round robin so replicas take turns
            replica = min(range(n), key=lambda i: (self._load[i], (i - self._next) % n))
            self._next = (replica + 1) % n
            ref = (
                self._actors[replica]
                .generate.options(concurrency_group=_GENERATE)
                .remote(list(tickets), min_version)
            )
            self._pending[ref] = (replica, len(tickets))
            self._load[replica] += len(tickets)
            self._wake.notify_all()

    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        start = time.perf_counter()
        if version <= self._version:
            raise ValueError(f"weights version must increase: have {self._version}, got {version}")
        # One copy in the object store for every replica, serialised now: the trainer goes
        # on mutating its own tensors.
        ref = self._ray.put({name: t.detach().cpu() for name, t in state.items()})
        with self._wake:
            if self._closed:
                raise RuntimeError("publish() after close()")
            for replica, actor in enumerate(self._actors):
                call = actor.load.options(concurrency_group=_WEIGHTS).remote([ref], version)
                self._pending[call] = (replica, 0)
            self._version = version
            self._publishes += 1
            self._publish_s += time.perf_counter() - start
            self._wake.notify_all()

    def busy_seconds(self) -> float:
        with self._lock:
            return sum(s[0] for s in self._stats)

    def weight_stats(self) -> WeightSyncStats:
        with self._lock:
            return WeightSyncStats(
                version=self._version,
                publishes=self._publishes,
                pulls=sum(s[1] for s in self._stats),
                publish_seconds=self._publish_s,
                pull_seconds=sum(s[2] for s in self._stats),
            )

    def in_flight_updates(self) -> int:
        with self._lock:
            return sum(s[3] for s in self._stats)

    def tickets_by_replica(self) -> list[int]:
        """Tickets in flight on each replica right now (for monitoring and tests)."""
        with self._lock:
            return list(self._load)

    def close(self) -> None:
        """Stop the reader and kill the actors; generations still running are dropped."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        self._reader.join()
        self._kill()

    def _kill(self) -> None:
        for actor in self._actors:
            with contextlib.suppress(Exception):  # already dead, or Ray shut down
                self._ray.kill(actor, no_restart=True)
        self._actors = []


def _describe(opts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in opts.items() if k in _OWN_OPTIONS)


def _check_placement(
    replicas: int,
    num_cpus: float,
    num_gpus: float,
    options: Mapping[str, Any] | None,
    threads: int | None,
) -> None:
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    if num_cpus < 0 or num_gpus < 0:
        raise ValueError(f"num_cpus and num_gpus must be >= 0, got {num_cpus} and {num_gpus}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    clash = sorted(_OWN_OPTIONS & set(options or {}))
    if clash:
        raise ValueError(
            f"options may not set {', '.join(clash)}. HINT: pass num_cpus=, num_gpus= and "
            "resources= as keywords; the engine sets the actor's concurrency itself."
        )
