"""Shared builders for the surge.rl tests: tiny, seeded, fast."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from surge.rl import ReverseDigits, RLConfig, TinyLM, TinyLMConfig, Trainer


def build_trainer(**overrides: Any) -> Trainer:
    """A trainer on the easy demo task (learns within ~100 steps), 1 thread per side."""
    length = overrides.pop("length", 4)
    digits = overrides.pop("digits", 4)
    seed = overrides.get("seed", 0)
    d_model = overrides.pop("d_model", 32)
    task = ReverseDigits(length=length, digits=digits)
    torch.manual_seed(seed)
    model = TinyLM(TinyLMConfig(vocab_size=task.vocab_size, d_model=d_model, d_ff=2 * d_model))
    cfg: dict[str, Any] = {
        "prompts_per_batch": 4,
        "group_size": 8,
        "generator_threads": 1,
        "trainer_threads": 1,
        "weight_sync_timeout": 60.0,
    }
    cfg.update(overrides)
    return Trainer(model, task, RLConfig(**cfg))


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


@pytest.fixture
def make_trainer() -> Any:
    return build_trainer
