"""Versioned, atomic weight sync from the trainer to the generator.

The trainer *publishes* a snapshot of its weights tagged with a policy version; the
generator *pulls* the newest snapshot into its own copy of the model between two forward
passes. A pull never observes a half-written snapshot (publish builds the snapshot
completely, then swaps one reference under a lock), and a generator never reads a
half-updated model (it loads only between forward passes, into a model no other thread
touches). This is the in-process transport; ``surge.rl.DistributedWeightSync`` moves the
same snapshots across processes with ``torch.distributed``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from surge.rl._errors import WeightSyncTimeout

__all__ = ["InProcessWeightSync", "WeightSync", "WeightSyncStats"]


@dataclass(frozen=True)
class WeightSyncStats:
    """Counters of one weight-sync transport: how many syncs and what they cost."""

    version: int
    publishes: int
    pulls: int
    publish_seconds: float
    pull_seconds: float

    @property
    def seconds_per_publish(self) -> float:
        return self.publish_seconds / self.publishes if self.publishes else 0.0

    @property
    def seconds_per_pull(self) -> float:
        return self.pull_seconds / self.pulls if self.pulls else 0.0


class WeightSync(Protocol):
    """How weights travel from trainer to generator: versioned, atomic, with a timeout."""

    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        """Make ``state`` the newest weights, tagged ``version`` (must increase)."""
        ...

    def latest_version(self) -> int:
        """Version of the newest published weights (``-1`` before the first publish)."""
        ...

    def pull(
        self, model: nn.Module, *, have: int, min_version: int = -1, timeout: float | None = None
    ) -> int:
        """Load the newest weights into ``model`` if newer than ``have``; return their version.

        Waits up to ``timeout`` seconds for a version ``>= min_version`` and raises
        :class:`WeightSyncTimeout` if none arrives.
        """
        ...

    def statistics(self) -> WeightSyncStats: ...


class InProcessWeightSync:
    """Weight sync between threads of one process.

    ``publish`` copies the tensors (the trainer keeps mutating its own); the copy is
    immutable once the reference swap makes it visible, so pulls need no lock while they
    load it.

    Example::

        sync = InProcessWeightSync()
        sync.publish(trainer_model.state_dict(), version=1)
        version = sync.pull(generator_model, have=0)  # -> 1
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._version = -1
        self._snapshot: dict[str, torch.Tensor] = {}
        self._publishes = 0
        self._pulls = 0
        self._publish_s = 0.0
        self._pull_s = 0.0

    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        start = time.perf_counter()
        snapshot = {name: t.detach().clone() for name, t in state.items()}
        with self._cond:
            if version <= self._version:
                raise ValueError(
                    f"weights version must increase: have {self._version}, got {version}"
                )
            self._snapshot, self._version = snapshot, version
            self._publishes += 1
            self._publish_s += time.perf_counter() - start
            self._cond.notify_all()

    def latest_version(self) -> int:
        with self._cond:
            return self._version

    def pull(
        self,
        model: nn.Module,
        *,
        have: int,
        min_version: int = -1,
        timeout: float | None = None,
    ) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: self._version >= min_version, timeout):
                raise WeightSyncTimeout(
                    f"no weights of version >= {min_version} within {timeout}s "
                    f"(newest is {self._version}). HINT: is the trainer still running?"
                )
            version, snapshot = self._version, self._snapshot
        if version <= have:
            return have
        start = time.perf_counter()
        with torch.no_grad():
            model.load_state_dict(snapshot)
        elapsed = time.perf_counter() - start
        with self._cond:
            self._pulls += 1
            self._pull_s += elapsed
        return version

    def statistics(self) -> WeightSyncStats:
        with self._cond:
            return WeightSyncStats(
                version=self._version,
                publishes=self._publishes,
                pulls=self._pulls,
                publish_seconds=self._publish_s,
                pull_seconds=self._pull_s,
            )
