"""A transformers causal LM as the policy: cached decoding, training, process engine."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from surge.rl import Generator, HFCausalLM, ReverseDigits, RLConfig, Trainer

transformers = pytest.importorskip("transformers")


def _policy(task: ReverseDigits, seed: int = 0) -> HFCausalLM:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=task.vocab_size,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=task.BOS,
        eos_token_id=task.EOS,
    )
    return HFCausalLM(transformers.GPT2LMHeadModel(config))  # from a config: no download


def _trainer(**overrides: Any) -> Trainer:
    task = ReverseDigits(length=4, digits=4)
    cfg: dict[str, Any] = {
        "prompts_per_batch": 4,
        "group_size": 4,
        "generator_threads": 1,
        "trainer_threads": 1,
        "weight_sync_timeout": 60.0,
    }
    return Trainer(_policy(task), task, RLConfig(**(cfg | overrides)))


def test_cached_decoding_matches_the_full_forward_pass() -> None:
    task = ReverseDigits(length=4, digits=4)
    policy = _policy(task).eval()
    tokens = torch.randint(0, 10, (3, 9))
    with torch.no_grad():
        full = policy(tokens)
        logits, cache = policy.prefill(tokens[:, :6])
        steps = [logits]
        for i in range(6, 9):
            logits, cache = policy.decode(tokens[:, i], cache)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps[:-1], dim=1), full[:, 5:8])


def test_generator_samples_the_same_with_and_without_the_cache() -> None:
    task = ReverseDigits(length=4, digits=4)
    policy = _policy(task).eval()

    class NoCache(torch.nn.Module):  # forward only: the generator reruns the prefix
        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = policy(tokens)
            return out

    def sample(model: torch.nn.Module) -> list[torch.Tensor]:
        gen = Generator(model, task, group_size=4, seed=3, refresh=lambda mv: 0)
        return [r.completions for r in gen.generate([0, 1])]

    for cached, uncached in zip(sample(policy), sample(NoCache()), strict=True):
        assert torch.equal(cached, uncached)


def test_async_training_moves_the_weights_within_the_bound() -> None:
    trainer = _trainer(mode="async", max_staleness=1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    history = trainer.train(4)
    assert max(s.lag_max for s in history) <= 1 and trainer.dropped == 0
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_the_process_engine_delivers_exactly_the_in_process_weights() -> None:
    threaded = _trainer(mode="sync")
    threaded.train(2)
    process = _trainer(mode="sync", engine="process")
    process.train(2)
    a, b = threaded.model.state_dict(), process.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
