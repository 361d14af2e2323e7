"""Weight-broadcast groups between a trainer and an inference server, outside the default
process group (the trainer's own ``torch.distributed`` job, if any, stays untouched).

Real servers broadcast over NCCL: TRL's ``vllm-serve`` with vLLM's
``StatelessProcessGroup`` + ``PyNcclCommunicator``, SGLang with a custom
``torch.distributed`` group. Both are created lazily here, only when asked for, so nothing
imports vLLM or initialises CUDA on a CPU machine. The ``gloo`` stand-in builds the same
shape of group (a TCP store and a rank per process) on the CPU; surge's simulator speaks
it, so the whole server path runs in tests without a GPU.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
from typing import Any, Protocol

import torch
import torch.distributed as dist

__all__ = ["BroadcastGroup", "GroupBroken", "gloo_group", "nccl_group", "sglang_group"]


class GroupBroken(ConnectionError):
    """The other end of a weight group went away mid-transfer (a server restart)."""


class BroadcastGroup(Protocol):
    """What a weight push needs from a group: broadcast a tensor, wait for everyone."""

    def broadcast(self, tensor: torch.Tensor, src: int) -> None: ...

    def barrier(self) -> None: ...

    def close(self) -> None: ...


class _Gloo:
    def __init__(self, store: Any, rank: int, world_size: int, timeout: float) -> None:
        self._store = store  # the group keeps using it; hold it as long as the group
        gloo: Any = dist.ProcessGroupGloo
        self._pg: Any = gloo(store, rank, world_size, datetime.timedelta(seconds=timeout))

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = src
        opts.rootTensor = 0
        pg = self._pg
        if pg is None:
            raise GroupBroken("the weight group is closed")
        try:
            pg.broadcast([tensor], opts).wait()
        except RuntimeError as exc:  # gloo: "Connection reset by peer", timeouts
            raise GroupBroken(str(exc)) from exc

    def barrier(self) -> None:
        pg = self._pg
        if pg is None:
            raise GroupBroken("the weight group is closed")
        try:
            pg.barrier().wait()
        except RuntimeError as exc:
            raise GroupBroken(str(exc)) from exc

    def close(self) -> None:
        self._pg = None
        self._store = None


def gloo_group(
    host: str,
    port: int,
    rank: int,
    world_size: int,
    *,
    prefix: str = "",
    device_prefix: str = "",
    timeout: float = 60.0,
) -> BroadcastGroup:
    """A CPU stand-in for the servers' NCCL groups: rank 0 hosts the TCP store; keys go
    under ``prefix`` then ``device_prefix`` (torch's helper nests them that way)."""
    tcp_store: Any = dist.TCPStore  # type: ignore[attr-defined]
    store: Any = tcp_store(
        host,
        port,
        world_size,
        is_master=rank == 0,
        timeout=datetime.timedelta(seconds=timeout),
    )
    for part in (prefix, device_prefix):
        if part:
            store = dist.PrefixStore(part, store)  # type: ignore[attr-defined]
    return _Gloo(store, rank, world_size, timeout)


class _PyNccl:
    def __init__(self, comm: Any) -> None:
        self._comm = comm

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        self._comm.broadcast(tensor, src=src)

    def barrier(self) -> None:
        self._comm.group.barrier()

    def close(self) -> None:
        self._comm = None


def nccl_group(host: str, port: int, rank: int, world_size: int, device: int) -> BroadcastGroup:
    """The client side of TRL's weight group: vLLM's ``StatelessProcessGroup`` (rank 0, a
    vLLM worker, hosts the store) and a ``PyNcclCommunicator`` on ``device``.

    Matches ``VLLMClient.init_communicator`` in huggingface/trl ``trl/extras/vllm_client.py``.
    """
    try:
        utils = importlib.import_module("vllm.distributed.utils")
        pynccl = importlib.import_module("vllm.distributed.device_communicators.pynccl")
    except ImportError as exc:
        raise ImportError(
            "weights over NCCL to `trl vllm-serve` need vLLM in the trainer's environment. "
            "HINT: pip install vllm, or push weights from disk (weights='disk')."
        ) from exc
    pg = utils.StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size)
    return _PyNccl(pynccl.PyNcclCommunicator(pg, device=device))


class _TorchGroup:
    def __init__(self, group: Any) -> None:
        self._group = group

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        if self._group is None:
            raise GroupBroken("the weight group is closed")
        try:
            dist.broadcast(tensor, src=src, group=self._group)
        except RuntimeError as exc:  # gloo: "Connection reset by peer", timeouts
            raise GroupBroken(str(exc)) from exc

    def barrier(self) -> None:
        if self._group is None:
            raise GroupBroken("the weight group is closed")
        try:
            dist.barrier(group=self._group)
        except RuntimeError as exc:
            raise GroupBroken(str(exc)) from exc

    def close(self) -> None:
        if self._group is not None:
            group, self._group = self._group, None
            with contextlib.suppress(Exception):  # a peer that died leaves it half torn
                dist.destroy_process_group(group)


def sglang_group(
    host: str,
    port: int,
    world_size: int,
    group_name: str,
    *,
    backend: str = "nccl",
    timeout: float = 600.0,
) -> BroadcastGroup:
    """The trainer side (rank 0) of SGLang's weight-update group.

    Built the way SGLang's server builds its side (``init_custom_process_group`` in
    sgl-project/sglang ``python/sglang/srt/utils``, also what its
    ``test/srt/test_update_weights_from_distributed.py`` uses on the trainer side): a
    ``tcp://host:port`` rendezvous, where rank 0 hosts the store, and torch's own process
    group helper under ``group_name``, without touching the default process group.
    ``backend`` is ``"nccl"`` for a real server, ``"gloo"`` for surge's simulator.
    """
    from torch.distributed import distributed_c10d as c10d

    wait = datetime.timedelta(seconds=timeout)
    rendezvous: Any = c10d.rendezvous  # type: ignore[attr-defined]
    store, rank, size = next(rendezvous(f"tcp://{host}:{port}", 0, world_size, timeout=wait))
    helper: Any = c10d._new_process_group_helper
    made = helper(size, rank, [], backend, store, group_name=group_name, timeout=wait)
    group = made[0] if isinstance(made, tuple) else made
    c10d._world.pg_group_ranks[group] = {i: i for i in range(size)}
    return _TorchGroup(group)
