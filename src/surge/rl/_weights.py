"""Versioned, atomic weight sync from the trainer to the generator.

The trainer *publishes* a snapshot of its weights tagged with a policy version; the
generator *pulls* the newest snapshot into its own copy of the model between two forward
passes. A pull never observes a half-written snapshot (publish builds the snapshot
completely, then swaps one reference under a lock), and a generator never reads a
half-updated model (it loads only between forward passes, into a model no other thread
touches). This is the in-process transport; ``surge.rl.DistributedWeightSync`` moves the
same snapshots across processes with ``torch.distributed``.

Both transports move weights as a :class:`WeightLayout` packs them: a few flat buffers
per dtype (bucketed, so a large model never needs one giant allocation), every tensor in
its own dtype (bf16 stays bf16, an int64 buffer stays exact), and tensors that share
storage (tied embeddings) sent once. Packing is one copy per bucket on the tensors' own
device, which is all that ``publish`` costs the training step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from surge.rl._errors import WeightSyncTimeout

__all__ = ["InProcessWeightSync", "WeightLayout", "WeightSync", "WeightSyncStats"]

# 256 MiB per flat buffer: large enough that a 100M-parameter bf16 model moves in one
# message, small enough that a 7B model never needs one 14 GB staging allocation.
DEFAULT_BUCKET_BYTES = 256 * 2**20


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    bucket: int
    offset: int
    numel: int


@dataclass(frozen=True)
class _Bucket:
    dtype: torch.dtype  # the wire dtype: bool travels as uint8 (gloo/NCCL lack bool)
    numel: int


def _wire_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.uint8 if dtype == torch.bool else dtype


def _storage_key(t: torch.Tensor) -> tuple[object, ...] | None:
    """What makes two state-dict entries the same tensor (tied weights); None on meta,
    where every tensor reports the same null address."""
    if t.device.type == "meta":
        return None
    return (
        t.device,
        t.untyped_storage().data_ptr(),
        t.storage_offset(),
        t.dtype,
        t.shape,
        t.stride(),
    )


@dataclass(frozen=True)
class WeightLayout:
    """Where each tensor of a state dict lives in a few flat buffers, one set per dtype.

    Both ends of a transport build their buffers from the same layout, so only the flat
    buffers travel. Entries that share storage with an earlier entry (tied weights) are
    *aliases*: they take no room and are sent once.

    Example::

        layout = WeightLayout.of(model.state_dict())
        buffers = layout.pack(model.state_dict())     # one copy per bucket
        layout.load_into(other_model, buffers)        # exact, dtype for dtype
    """

    entries: tuple[_Entry, ...]
    aliases: tuple[tuple[str, str], ...]  # (alias, the entry it shares storage with)
    buckets: tuple[_Bucket, ...]

    @classmethod
    def of(
        cls, state: Mapping[str, torch.Tensor], *, bucket_bytes: int = DEFAULT_BUCKET_BYTES
    ) -> WeightLayout:
        if bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
        entries: list[_Entry] = []
        aliases: list[tuple[str, str]] = []
        seen: dict[tuple[object, ...], str] = {}
        buckets: list[_Bucket] = []
        open_bucket: dict[torch.dtype, int] = {}  # wire dtype -> index of its last bucket
        for name, t in state.items():
            key = _storage_key(t)
            if key is not None and key in seen:
                aliases.append((name, seen[key]))
                continue
            if key is not None:
                seen[key] = name
            wire = _wire_dtype(t.dtype)
            numel = t.numel()
            index = open_bucket.get(wire)
            size = t.element_size()
            if index is None or (buckets[index].numel + numel) * size > bucket_bytes:
                index = len(buckets)
                buckets.append(_Bucket(wire, 0))
                open_bucket[wire] = index
            offset = buckets[index].numel
            buckets[index] = _Bucket(wire, offset + numel)
            entries.append(_Entry(name, t.dtype, tuple(t.shape), index, offset, numel))
        return cls(tuple(entries), tuple(aliases), tuple(buckets))

    @property
    def names(self) -> list[str]:
        """Every name of the state dict, aliases included, in the layout's order."""
        return [e.name for e in self.entries] + [a for a, _ in self.aliases]

    @property
    def nbytes(self) -> int:
        """Bytes on the wire per sync (tied weights counted once)."""
        return sum(b.numel * torch.empty(0, dtype=b.dtype).element_size() for b in self.buckets)

    def empty(self, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Receive buffers, one per bucket."""
        return [torch.empty(b.numel, dtype=b.dtype, device=device) for b in self.buckets]

    def pack(
        self,
        state: Mapping[str, torch.Tensor],
        *,
        device: torch.device | str | None = None,
        out: Sequence[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Copy ``state`` into flat buffers (new ones on ``device``, default: the
        tensors' own device, or ``out``); the trainer may change ``state`` right after."""
        missing = [e.name for e in self.entries if e.name not in state]
        if missing:
            raise KeyError(f"state lacks {missing[:3]} of the weight layout")
        if out is None:
            if device is None:
                device = state[self.entries[0].name].device if self.entries else "cpu"
            buffers = self.empty(device)
        else:
            buffers = list(out)
        with torch.no_grad():
            for e in self.entries:
                src = state[e.name].detach()
                if src.dtype == torch.bool:
                    src = src.to(torch.uint8)
                dst = buffers[e.bucket].narrow(0, e.offset, e.numel)
                dst.copy_(src.reshape(-1), non_blocking=True)
        return buffers

    def views(self, buffers: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict as views into ``buffers`` (aliases share their entry's view)."""
        out: dict[str, torch.Tensor] = {}
        for e in self.entries:
            flat = buffers[e.bucket].narrow(0, e.offset, e.numel)
            view = flat.view(e.shape)
            out[e.name] = view.to(torch.bool) if e.dtype == torch.bool else view
        for alias, target in self.aliases:
            out[alias] = out[target]
        return out

    def load_into(self, model: nn.Module, buffers: Sequence[torch.Tensor]) -> None:
        """Copy ``buffers`` into ``model``'s own tensors, in place, dtype for dtype.

        The model keeps its device; a tensor tied in the model is written once.
        """
        own = model.state_dict(keep_vars=True)
        src = self.views(buffers)
        unknown = [n for n in src if n not in own]
        if unknown:
            raise KeyError(
                f"the model has no {unknown[:3]}. HINT: the generator's model must have the "
                "trainer's architecture (same state-dict names)."
            )
        written: set[tuple[object, ...]] = set()
        with torch.no_grad():
            for name, value in src.items():
                dst = own[name]
                key = _storage_key(dst)
                if key is not None:
                    if key in written:
                        continue
                    written.add(key)
                dst.copy_(value, non_blocking=dst.device.type == "cuda")


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

    def __init__(self, *, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        self._cond = threading.Condition()
        self._version = -1
        self._bucket_bytes = bucket_bytes
        self._layout: WeightLayout | None = None
        self._layout_keys: tuple[str, ...] = ()
        self._snapshot: list[torch.Tensor] = []
        self._publishes = 0
        self._pulls = 0
        self._publish_s = 0.0
        self._pull_s = 0.0

    def publish(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        start = time.perf_counter()
        layout = self._layout
        if layout is None or self._layout_keys != tuple(state):
            layout = WeightLayout.of(state, bucket_bytes=self._bucket_bytes)
            self._layout_keys = tuple(state)
        # New buffers every time, on the trainer's device: a generator may still be
        # loading the previous snapshot.
        snapshot = layout.pack(state)
        with self._cond:
            if version <= self._version:
                raise ValueError(
                    f"weights version must increase: have {self._version}, got {version}"
                )
            self._snapshot, self._layout, self._version = snapshot, layout, version
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
            version, snapshot, layout = self._version, self._snapshot, self._layout
        if version <= have or layout is None:
            return have
        start = time.perf_counter()
        layout.load_into(model, snapshot)
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
