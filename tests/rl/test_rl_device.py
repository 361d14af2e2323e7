"""device= is honoured everywhere it is accepted (CPU and meta here; CUDA in the device check)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from surge.rl import (
    ProcessEngine,
    ReverseDigits,
    RLConfig,
    ThreadEngine,
    TinyLM,
    TinyLMConfig,
    Trainer,
)
from surge.rl._device import resolve_device


def _model(task: ReverseDigits, dtype: torch.dtype = torch.float32) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(TinyLMConfig(vocab_size=task.vocab_size, d_model=32, d_ff=64)).to(dtype)


def _engine_kwargs() -> dict[str, Any]:
    return {
        "group_size": 2,
        "seed": 0,
        "threads": 1,
        "in_flight_weight_updates": False,
        "timeout": 30.0,
        "on_result": lambda rollouts: None,
        "on_error": lambda exc: None,
    }


@pytest.mark.parametrize("device", ["cpu", "meta", torch.device("cpu")])
def test_devices_resolve_to_what_was_asked(device: Any) -> None:
    assert resolve_device(device) == torch.device(device)


def test_default_is_cuda_when_present_else_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_fails_at_the_door_with_a_hint(device: str) -> None:
    with pytest.raises(ValueError, match=r"sees no CUDA device.*HINT"):
        resolve_device(device, what="generator_device")


@pytest.mark.parametrize("device", ["tpu", "not a device", 3.5])
def test_unknown_devices_fail_with_a_hint(device: Any) -> None:
    with pytest.raises(ValueError, match="HINT"):
        resolve_device(device)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_trainer_places_the_model_and_its_optimizer_on_its_device(device: str) -> None:
    task = ReverseDigits(length=3, digits=3)
    trainer = Trainer(_model(task), task, RLConfig(), device=device, generator_device="cpu")
    assert {p.device.type for p in trainer.model.parameters()} == {device}
    opt_params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert all(p.device.type == device for p in opt_params)
    assert trainer.generator_device == torch.device("cpu")


def test_generator_device_defaults_to_the_trainers() -> None:
    task = ReverseDigits(length=3, digits=3)
    trainer = Trainer(_model(task), task, RLConfig(), device="meta")
    assert trainer.generator_device == torch.device("meta")


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_thread_engine_keeps_its_model_copy_on_its_device(device: str) -> None:
    task = ReverseDigits(length=3, digits=3)
    engine = ThreadEngine(_model(task), task, device=device, **_engine_kwargs())
    try:
        assert {p.device.type for p in engine._model.parameters()} == {device}
    finally:
        engine.close()


def test_a_generator_process_refuses_the_meta_device() -> None:
    task = ReverseDigits(length=3, digits=3)
    with pytest.raises(ValueError, match=r"meta.*HINT"):
        ProcessEngine(_model(task), task, device="meta", **_engine_kwargs())


def test_a_bf16_policy_stays_bf16_through_sampling_sync_and_training() -> None:
    task = ReverseDigits(length=3, digits=3)
    model = _model(task, torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[Any] = []

    def engine_factory(on_result: Any, on_error: Any) -> ThreadEngine:
        engine = ThreadEngine(
            model,
            task,
            group_size=4,
            seed=0,
            threads=1,
            in_flight_weight_updates=False,
            timeout=30.0,
            on_result=on_result,
            on_error=on_error,
            device="cpu",
        )
        seen.append(engine)
        return engine

    cfg = RLConfig(mode="async", prompts_per_batch=2, group_size=4, lr=1e-2)
    trainer = Trainer(model, task, cfg, engine_factory=engine_factory, device="cpu")
    stats = trainer.train(3)
    assert len(stats) == 3
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in seen[0]._model.parameters()} == {torch.bfloat16}
    # the last published snapshot is exactly the trainer's weights, in bf16
    assert seen[0].sync.latest_version() == 3
    fresh = _model(task, torch.bfloat16)
    assert seen[0].sync.pull(fresh, have=-1) == 3
    got, now = fresh.state_dict(), trainer.model.state_dict()
    assert all(torch.equal(got[k], now[k]) for k in now)
    assert any(not torch.equal(before[k], now[k]) for k in now)  # it trained
