"""Weight sync keeps every tensor exact: dtype for dtype, tied storage once, ints exact."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from torch import nn

from surge.rl import InProcessWeightSync, WeightLayout
from surge.rl._engines import DistributedWeightSync

BIG = 2**24 + 1  # the first integer float32 cannot hold


class Mixed(nn.Module):
    """A policy with every kind of tensor weight sync must carry."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6).to(torch.bfloat16)
        self.head = nn.Linear(6, 11, bias=False).to(torch.bfloat16)
        self.head.weight = self.emb.weight  # tied: one storage, two names
        self.norm = nn.LayerNorm(6).to(torch.float16)
        self.proj = nn.Linear(6, 6)  # float32
        self.register_buffer("steps", torch.tensor([BIG, 2**40 + 3, -7], dtype=torch.int64))
        self.register_buffer("keep", torch.tensor([True, False, True]))


def _randomised(seed: int) -> Mixed:
    torch.manual_seed(seed)
    m = Mixed()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p.float()).to(p.dtype))
        m.steps.add_(2 * seed)  # stays odd: beyond float32's integers
        m.keep.logical_not_()
    return m


def _assert_exact(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name


def test_layout_keeps_dtypes_sends_tied_weights_once_and_ints_exact() -> None:
    src, dst = _randomised(1), _randomised(2)
    layout = WeightLayout.of(src.state_dict())
    assert ("head.weight", "emb.weight") in layout.aliases
    wire_dtypes = {b.dtype for b in layout.buckets}
    assert wire_dtypes == {torch.bfloat16, torch.float16, torch.float32, torch.int64, torch.uint8}
    # tied weights counted once: 11*6 bf16 + 2*6 fp16 + (36+6) fp32 + 3 int64 + 3 bool
    assert layout.nbytes == 66 * 2 + 12 * 2 + 42 * 4 + 3 * 8 + 3
    layout.load_into(dst, layout.pack(src.state_dict()))
    _assert_exact(src, dst)
    assert int(dst.steps[0]) == BIG + 2
    assert int(torch.tensor(BIG + 2).float().long()) != BIG + 2  # what a float32 cast did
    assert dst.head.weight.data_ptr() == dst.emb.weight.data_ptr()  # still tied


def test_buckets_split_a_dtype_at_the_byte_limit() -> None:
    state = {f"w{i}": torch.full((100,), float(i)) for i in range(5)}  # 400 bytes each
    layout = WeightLayout.of(state, bucket_bytes=1000)
    assert [b.numel for b in layout.buckets] == [200, 200, 100]
    got = layout.views(layout.pack(state))
    assert all(torch.equal(got[k], v) for k, v in state.items())


def test_in_process_sync_round_trips_every_dtype_exactly() -> None:
    src, dst = _randomised(3), _randomised(4)
    before = {k: v.clone() for k, v in src.state_dict().items()}
    sync = InProcessWeightSync()
    sync.publish(src.state_dict(), version=1)
    with torch.no_grad():  # the trainer moves on; the snapshot must not follow
        src.proj.weight.add_(1.0)
        src.steps.add_(1)
    assert sync.pull(dst, have=0) == 1
    got = dst.state_dict()
    for name, value in before.items():
        assert got[name].dtype == value.dtype and torch.equal(got[name], value), name


def test_pack_fails_on_a_state_that_lacks_a_name() -> None:
    layout = WeightLayout.of({"a": torch.zeros(2), "b": torch.zeros(2)})
    with pytest.raises(KeyError, match="lacks"):
        layout.pack({"a": torch.zeros(2)})


def test_load_into_a_different_architecture_fails_with_a_hint() -> None:
    layout = WeightLayout.of({"not_a_weight": torch.zeros(2)})
    with pytest.raises(KeyError, match="HINT"):
        layout.load_into(nn.Linear(2, 2), layout.pack({"not_a_weight": torch.zeros(2)}))


def test_meta_tensors_are_laid_out_without_storage() -> None:
    with torch.device("meta"):
        model = Mixed()
    layout = WeightLayout.of(model.state_dict())
    # meta tensors have no addresses, so nothing is (wrongly) merged as tied
    assert layout.aliases == ()
    buffers = layout.pack(model.state_dict())
    assert all(b.device.type == "meta" for b in buffers)
    assert layout.views(buffers)["steps"].dtype == torch.int64


def test_gloo_sync_between_two_ranks_is_exact() -> None:
    """DistributedWeightSync over a real gloo group (two threads, two process groups)."""
    import torch.distributed as dist

    src, dst = _randomised(5), _randomised(6)
    layout = WeightLayout.of(src.state_dict())
    store = dist.HashStore()
    groups: dict[int, Any] = {}
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            groups[r] = dist.ProcessGroupGloo(store, r, 2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    flat = layout.pack(src.state_dict(), device="cpu")
    recv = layout.empty("cpu")
    sends = [groups[0].send([b], 1, 0) for b in flat]
    for b in recv:
        groups[1].recv([b], 0, 0).wait()
    for w in sends:
        w.wait()
    layout.load_into(dst, recv)
    _assert_exact(src, dst)
    # and the transport object accepts a ready layout
    assert DistributedWeightSync(layout, peer=1).layout is layout


def test_a_bf16_policy_trains_the_same_through_the_process_engine_as_in_process() -> None:
    """Weights cross the process boundary in bf16 and land exactly: sync training through
    the process engine (gloo) ends on the same bits as through the thread engine."""
    from tests.rl.conftest import build_trainer

    ends = []
    for engine in ("thread", "process"):
        trainer = build_trainer(mode="sync", engine=engine)
        trainer.model.to(torch.bfloat16)
        trainer.train(2)
        ends.append(trainer.model.state_dict())
    thread, process = ends
    assert {t.dtype for t in process.values()} == {torch.bfloat16}
    for name, value in thread.items():
        assert torch.equal(value, process[name]), name
