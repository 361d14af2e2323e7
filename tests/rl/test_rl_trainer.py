"""Trainer behaviour: sync == async at staleness 0, the bound, no starvation, resume."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.rl.conftest import assert_same_weights, weights

from surge.rl import (
    ReverseDigits,
    RLConfig,
    StepStats,
    TinyLM,
    TinyLMConfig,
    Trainer,
    TrainerStopped,
)


def assert_in_order(history: list[StepStats], groups_per_step: int, first_step: int = 0) -> None:
    """Every ticket trained exactly once, in order: nothing starved, nothing skipped."""
    tickets = [t for s in history for t in s.tickets]
    start = first_step * groups_per_step
    assert tickets == list(range(start, start + len(history) * groups_per_step))
    assert [s.step for s in history] == list(range(first_step, first_step + len(history)))


def test_async_with_staleness_zero_equals_sync_exactly(make_trainer: Any) -> None:
    sync = make_trainer(mode="sync")
    sync_stats = sync.train(8)
    asyn = make_trainer(mode="async", max_staleness=0)
    async_stats = asyn.train(8)
    assert_same_weights(weights(sync), weights(asyn))
    assert [s.reward_mean for s in sync_stats] == [s.reward_mean for s in async_stats]
    assert all(s.lag_max == 0 for s in async_stats)


@pytest.mark.parametrize("bound", [1, 2])
def test_no_sample_is_trained_beyond_the_bound(make_trainer: Any, bound: int) -> None:
    trainer = make_trainer(mode="async", max_staleness=bound, in_flight_weight_updates=True)
    history = trainer.train(12)
    assert max(s.lag_max for s in history) <= bound
    assert all(s.lag_min >= 0 for s in history)
    assert trainer.dropped == 0  # admission control, not dropping, kept the bound
    assert_in_order(history, trainer.config.groups_per_step)


def test_stale_queue_is_dropped_and_regenerated_on_a_tighter_bound(
    make_trainer: Any, tmp_path: Path
) -> None:
    loose = make_trainer(mode="async", max_staleness=3)
    loose.train(2)
    # Leave generated-ahead rollouts queued, then resume them under a bound of 0.
    ckpt = tmp_path / "loose.pt"
    loose.save_checkpoint(ckpt)
    queue = torch.load(ckpt, weights_only=False)["queue"]
    gps = loose.config.groups_per_step
    hopeless = sum(1 for d in queue if d["ticket"] // gps - int(d["versions"][d["mask"]].min()) > 0)
    tight = make_trainer(mode="async", max_staleness=0)
    tight.load_checkpoint(ckpt)
    history = tight.train(3)
    assert all(s.lag_max == 0 for s in history)
    assert_in_order(history, tight.config.groups_per_step, first_step=2)
    assert tight.dropped == hopeless  # dropped once each, then regenerated in place


def test_resume_continues_exactly_in_sync_mode(make_trainer: Any, tmp_path: Path) -> None:
    straight = make_trainer(mode="sync")
    straight.train(6)
    first = make_trainer(mode="sync")
    first.train(3)
    first.save_checkpoint(tmp_path / "ckpt.pt")
    resumed = make_trainer(mode="sync", seed=0)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert resumed.version == 3
    history = resumed.train(3)
    assert [s.step for s in history] == [3, 4, 5]
    assert_same_weights(weights(straight), weights(resumed))


def test_resume_in_async_mode_keeps_version_and_queue(make_trainer: Any, tmp_path: Path) -> None:
    trainer = make_trainer(mode="async", max_staleness=2)
    first = trainer.train(4)
    trainer.save_checkpoint(tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    queued = [d["ticket"] for d in state["queue"]]
    gps = trainer.config.groups_per_step
    assert queued == list(range(4 * gps, 4 * gps + len(queued)))
    resumed = make_trainer(mode="async", max_staleness=2)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    second = resumed.train(4)
    assert_in_order(first + second, gps)
    assert max(s.lag_max for s in second) <= 2
    assert resumed.version == 8


def test_reward_rises_synchronously(make_trainer: Any) -> None:
    history = make_trainer(mode="sync", d_model=64, prompts_per_batch=8).train(100)
    early = sum(s.reward_mean for s in history[:10]) / 10
    late = sum(s.reward_mean for s in history[-10:]) / 10
    assert early < 0.35  # chance is 0.25 with 4 digits, less while EOS and BOS get sampled
    assert late > 0.6  # typically 0.99 after 100 steps


def test_reward_rises_asynchronously(make_trainer: Any) -> None:
    trainer = make_trainer(mode="async", max_staleness=2, d_model=64, prompts_per_batch=8)
    history = trainer.train(100)
    late = sum(s.reward_mean for s in history[-10:]) / 10
    assert late > 0.6  # typically 0.99; timing decides the lags, so keep a wide margin
    assert max(s.lag_max for s in history) <= 2


def test_online_dpo_reward_rises_asynchronously(make_trainer: Any) -> None:
    trainer = make_trainer(
        mode="async", max_staleness=1, algorithm="online_dpo", d_model=64, prompts_per_batch=8
    )
    history = trainer.train(120)
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in history)
    assert all(0.0 < s.ess <= 1.0 + 1e-9 for s in history)
    assert max(s.lag_max for s in history) <= 1
    early = sum(s.reward_mean for s in history[:10]) / 10
    late = sum(s.reward_mean for s in history[-10:]) / 10
    assert early < 0.35 and late > 0.35  # typically 0.07 -> 0.6


def test_stats_are_reported_every_step(make_trainer: Any) -> None:
    history = make_trainer(mode="sync", ppo_epochs=2).train(4)
    for s in history:
        assert 0.0 <= s.generator_busy <= 1.0 and 0.0 <= s.trainer_busy <= 1.0
        assert 0.0 <= s.clip_fraction <= 1.0
        assert s.kl >= 0.0 and s.tokens > 0 and s.weight_sync_seconds >= 0.0
    assert any(s.clip_fraction > 0 for s in history)  # second epoch moves the ratio


def test_process_engine_matches_thread_engine_in_sync_mode(make_trainer: Any) -> None:
    """The gloo weight path delivers exactly the weights the in-process path does."""
    threaded = make_trainer(mode="sync")
    threaded.train(3)
    process = make_trainer(mode="sync", engine="process")
    history = process.train(3)
    assert_same_weights(weights(threaded), weights(process))
    assert all(s.weight_sync_seconds > 0 for s in history)


def test_process_engine_async_keeps_the_bound(make_trainer: Any) -> None:
    trainer = make_trainer(mode="async", max_staleness=1, engine="process")
    history = trainer.train(6)
    assert max(s.lag_max for s in history) <= 1
    assert_in_order(history, trainer.config.groups_per_step)


class _BrokenTask(ReverseDigits):
    def reward(self, prompt: list[int], completion: list[int]) -> float:
        raise RuntimeError("reward model down")


@pytest.mark.parametrize("engine", ["thread", "process"])
def test_a_failing_generator_stops_the_trainer_with_the_cause(engine: str) -> None:
    task = _BrokenTask(length=3, digits=4)
    torch.manual_seed(0)
    model = TinyLM(TinyLMConfig(vocab_size=task.vocab_size, d_model=16, d_ff=32))
    cfg = RLConfig(mode="async", prompts_per_batch=2, group_size=2, engine=engine)  # type: ignore[arg-type]
    trainer = Trainer(model, task, cfg)
    with pytest.raises(TrainerStopped) as info:
        trainer.train(3)
    cause = info.value.__cause__
    assert cause is not None and "reward model down" in repr(cause) + str(cause)
    assert trainer.version == 0


def test_weights_are_published_every_sync_every_steps(make_trainer: Any) -> None:
    trainer = make_trainer(mode="async", max_staleness=1, sync_every=2)
    seen: list[int] = []
    original = trainer._publish

    def spy(engine: Any) -> None:
        seen.append(trainer.version)
        original(engine)

    trainer._publish = spy  # type: ignore[method-assign]
    history = trainer.train(6)
    assert seen == [0, 2, 4, 6]
    assert max(s.lag_max for s in history) <= 1


def test_skipping_zero_advantage_completions_leaves_the_gradient_unchanged(
    make_trainer: Any,
) -> None:
    from surge.rl import Generator, group_advantages, grpo_loss, token_logprobs

    trainer = make_trainer(max_grad_norm=1e9)  # no clipping: compare raw gradients
    task = trainer.task
    gen = Generator(trainer.model, task, group_size=8, seed=0, refresh=lambda mv: 0)
    batch = gen.generate([0, 1, 2, 3])
    batch[1].rewards = torch.full_like(batch[1].rewards, 0.5)  # a group with nothing to learn
    batch[2].rewards[3] = batch[2].rewards.mean() + 1e-3  # break any accidental ties
    reference = copy.deepcopy(trainer.model)

    trainer._update(batch)

    # The gradient the update used, against one over every completion of the batch.
    g, p_len = 8, task.prompt_len
    width = max(r.completions.shape[1] for r in batch)
    prompts = torch.tensor([r.prompt for r in batch for _ in range(g)])
    completions = torch.cat([r.completions for r in batch])[:, :width]
    tokens = torch.cat([prompts, completions], dim=1)
    mask = torch.cat([r.mask for r in batch])[:, :width]
    behaviour = torch.cat([r.behaviour_logprobs for r in batch])[:, :width]
    adv = group_advantages(torch.stack([r.rewards for r in batch]).float()).reshape(-1)
    assert int((adv == 0).sum()) >= g
    logp = token_logprobs(reference, tokens, p_len)
    out = grpo_loss(
        logp, logp.detach(), behaviour, adv, mask, clip_eps=0.2, is_cap=2.0,
        total_tokens=int(mask.sum()),
    )  # fmt: skip
    out.loss.backward()
    for (name, got), want in zip(
        trainer.model.named_parameters(), reference.parameters(), strict=True
    ):
        assert got.grad is not None and want.grad is not None
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_batch_with_nothing_to_learn_still_steps_the_optimizer(make_trainer: Any) -> None:
    from surge.rl import Generator

    trainer = make_trainer()
    gen = Generator(trainer.model, trainer.task, group_size=8, seed=0, refresh=lambda mv: 0)
    trainer._update(gen.generate([0, 1]))  # the first step gives AdamW momentum
    before = weights(trainer)
    flat = gen.generate([2, 3])
    for r in flat:
        r.rewards = torch.ones_like(r.rewards)
    metrics = trainer._update(flat)
    assert metrics["ess"] == 1.0 and metrics["loss"] == 0.0
    moved = weights(trainer)
    assert any(not torch.equal(before[k], moved[k]) for k in before)  # momentum carried on


def test_a_script_without_a_main_guard_fails_fast_with_a_hint(tmp_path: Path) -> None:
    # The process engine spawns its generator, which re-imports the script; unguarded,
    # the child dies while starting and the parent used to wait out the rendezvous.
    script = tmp_path / "train.py"
    script.write_text(
        "from surge.rl import ReverseDigits, RLConfig, TinyLM, TinyLMConfig, Trainer\n"
        "task = ReverseDigits(length=3, digits=4)\n"
        "model = TinyLM(TinyLMConfig(vocab_size=task.vocab_size))\n"
        "cfg = RLConfig(engine='process', weight_sync_timeout=60)\n"
        "list(Trainer(model, task, cfg).run(1))\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "exited while starting" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
    assert time.monotonic() - started < 50  # not the 60 s rendezvous timeout


def test_checkpoint_mid_run_resumes_at_its_version(make_trainer: Any, tmp_path: Path) -> None:
    trainer = make_trainer(mode="async", max_staleness=2)
    gps = trainer.config.groups_per_step
    first: list[StepStats] = []
    for stats in trainer.run(6):  # the generator keeps working while we save
        first.append(stats)
        if stats.version == 3:
            trainer.save_checkpoint(tmp_path / "ckpt.pt")
            saved = weights(trainer)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert state["step"] == 3
    queued = [d["ticket"] for d in state["queue"]]
    assert queued == list(range(3 * gps, state["next_ticket"]))

    resumed = make_trainer(mode="async", max_staleness=2)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert_same_weights(saved, weights(resumed))
    second = resumed.train(3)
    assert_in_order(first[:3] + second, gps)
    assert max(s.lag_max for s in second) <= 2
