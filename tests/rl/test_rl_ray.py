"""RayEngine: generator actors on a local Ray, against the thread engine as reference.

Ray starts once for the module (a few seconds); every run starts its own actors (about
2-3 s each on a small CPU), so the tests keep the number of actors small.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from tests.rl.conftest import assert_same_weights, weights

from surge.rl import (
    RayEngine,
    ReverseDigits,
    RLConfig,
    Rollout,
    StepStats,
    TinyLM,
    TinyLMConfig,
    Trainer,
    TrainerStopped,
)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local",  # a new instance, never a cluster another process left running
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield
    if started:
        ray.shutdown()


def with_ray(trainer: Trainer, replicas: int = 1) -> Trainer:
    trainer.engine_factory = RayEngine.factory(
        trainer.model, trainer.task, trainer.config, replicas=replicas, num_cpus=1
    )
    return trainer


def assert_in_order(history: list[StepStats], groups_per_step: int) -> None:
    tickets = [t for s in history for t in s.tickets]
    assert tickets == list(range(len(history) * groups_per_step))


def test_two_replicas_keep_the_bound_and_train_every_ticket_once(make_trainer: Any) -> None:
    trainer = with_ray(
        make_trainer(mode="async", max_staleness=1, in_flight_weight_updates=True), replicas=2
    )
    history = trainer.train(6)
    assert max(s.lag_max for s in history) <= 1
    assert all(s.lag_min >= 0 for s in history)
    assert trainer.dropped == 0
    assert_in_order(history, trainer.config.groups_per_step)
    last = history[-1]
    assert last.weight_sync_seconds > 0
    assert 0.0 < last.generator_busy <= 1.0


def test_staleness_zero_matches_the_thread_engine_bit_for_bit(make_trainer: Any) -> None:
    threaded = make_trainer(mode="async", max_staleness=0)
    reference = threaded.train(3)
    trainer = with_ray(make_trainer(mode="async", max_staleness=0))
    history = trainer.train(3)
    assert_same_weights(weights(threaded), weights(trainer))
    assert [s.reward_mean for s in history] == [s.reward_mean for s in reference]
    assert all(s.lag_max == 0 for s in history)


def test_replicas_share_the_tickets_and_return_each_once() -> None:
    """Engine level: tickets spread over both actors, every ticket comes back once."""
    task = ReverseDigits(length=3, digits=4)
    torch.manual_seed(0)
    model = TinyLM(TinyLMConfig(vocab_size=task.vocab_size, d_model=16, d_ff=32))
    got: list[Rollout] = []
    errors: list[BaseException] = []
    done = threading.Condition()

    def on_result(rollouts: list[Rollout]) -> None:
        with done:
            got.extend(rollouts)
            done.notify_all()

    engine = RayEngine(
        model,
        task,
        group_size=2,
        seed=0,
        in_flight_weight_updates=False,
        timeout=30.0,
        on_result=on_result,
        on_error=errors.append,
        replicas=2,
        num_cpus=1,
    )
    try:
        # nothing is published yet: both generations wait for version 0 on their actor
        engine.submit([0, 1, 2], min_version=0)
        engine.submit([3, 4], min_version=0)
        assert engine.tickets_by_replica() == [3, 2]
        engine.publish(model.state_dict(), 0)
        engine.submit([5], min_version=0)
        with done:
            assert done.wait_for(lambda: len(got) == 6 or bool(errors), timeout=30)
    finally:
        engine.close()
    assert not errors
    assert engine.devices == ["cpu", "cpu"]  # no GPU asked for, none assigned
    assert sorted(r.ticket for r in got) == list(range(6))
    assert engine.tickets_by_replica() == [0, 0]
    stats = engine.weight_stats()
    assert stats.version == 0 and stats.publishes == 1
    assert stats.pulls == 2 and stats.pull_seconds > 0  # one load per replica
    with pytest.raises(ValueError, match="must increase"):
        engine.publish(model.state_dict(), 0)


def test_a_failing_actor_stops_the_trainer_with_the_remote_traceback() -> None:
    class BrokenTask(ReverseDigits):  # local: Ray ships it to the actor by value
        def reward(self, prompt: list[int], completion: list[int]) -> float:
            raise RuntimeError("reward model down")

    task = BrokenTask(length=3, digits=4)
    torch.manual_seed(0)
    model = TinyLM(TinyLMConfig(vocab_size=task.vocab_size, d_model=16, d_ff=32))
    cfg = RLConfig(mode="async", prompts_per_batch=2, group_size=2, weight_sync_timeout=30.0)
    trainer = Trainer(model, task, cfg, engine_factory=RayEngine.factory(model, task, cfg))
    start = time.perf_counter()
    with pytest.raises(TrainerStopped) as info:
        trainer.train(3)
    assert time.perf_counter() - start < 25  # close() did not hang
    cause = info.value.__cause__
    assert isinstance(cause, TrainerStopped)
    assert "reward model down" in str(cause)
    assert "in reward" in str(cause)  # the remote frame that raised
    assert trainer.version == 0


def test_the_trainer_can_run_in_a_ray_task_of_its_own() -> None:
    """Separate pools: the trainer in a task asking for one CPU, its generator in another."""

    def train(steps: int) -> tuple[int, int, int]:
        task = ReverseDigits(length=3, digits=4)
        torch.manual_seed(0)
        model = TinyLM(TinyLMConfig(vocab_size=task.vocab_size, d_model=16, d_ff=32))
        cfg = RLConfig(
            mode="async", max_staleness=1, prompts_per_batch=2, group_size=4, trainer_threads=1
        )
        trainer = Trainer(model, task, cfg, engine_factory=RayEngine.factory(model, task, cfg))
        history = trainer.train(steps)
        return len(history), max(s.lag_max for s in history), trainer.dropped

    assert ray.get(ray.remote(num_cpus=1)(train).remote(3), timeout=60) == (3, 1, 0)


@pytest.mark.parametrize(
    ("knobs", "hint"),
    [
        ({"replicas": 0}, "replicas"),
        ({"num_gpus": -1}, "num_gpus"),
        ({"options": {"num_cpus": 2}}, "HINT"),
    ],
)
def test_bad_placement_is_refused_at_the_door(knobs: dict[str, Any], hint: str) -> None:
    task = ReverseDigits(length=3)
    model = TinyLM(TinyLMConfig(vocab_size=task.vocab_size, d_model=16, d_ff=32))
    with pytest.raises(ValueError, match=hint):
        RayEngine.factory(model, task, RLConfig(), **knobs)


def test_a_request_ray_cannot_place_fails_with_the_cluster_size() -> None:
    task = ReverseDigits(length=3)
    model = TinyLM(TinyLMConfig(vocab_size=task.vocab_size, d_model=16, d_ff=32))
    with pytest.raises(TrainerStopped, match="HINT"):
        RayEngine(
            model,
            task,
            group_size=2,
            seed=0,
            in_flight_weight_updates=False,
            timeout=1.0,
            on_result=lambda rs: None,
            on_error=lambda e: None,
            resources={"no_such_pool": 1},
        )


def test_a_replica_samples_on_the_gpu_ray_assigned_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The device choice inside an actor: its first visible GPU when Ray assigned one."""
    import ray

    from surge.rl import _ray as ray_engine

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [3])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # CUDA_VISIBLE_DEVICES=3 inside the actor: physical GPU 3 is cuda:0 there
    assert ray_engine._actor_device() == torch.device("cuda", 0)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    assert ray_engine._actor_device() == torch.device("cpu")
