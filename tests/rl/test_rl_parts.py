"""Parts of surge.rl on their own: admission, weight sync, generator, losses, API."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import surge.rl
from surge.rl import (
    Generator,
    InProcessWeightSync,
    ReverseDigits,
    RLConfig,
    TinyLM,
    TinyLMConfig,
    WeightSyncTimeout,
    group_advantages,
    grpo_loss,
    offpolicy_metrics,
)
from surge.rl._admission import Admission


def test_public_names_are_exactly_these() -> None:
    assert sorted(surge.rl.__all__) == sorted(
        [
            "DistributedWeightSync", "Engine", "Generator", "HFCausalLM", "InProcessWeightSync", "OpenAIEngine", "WeightPusher", "disk_weight_pusher",
            "ProcessEngine", "RLConfig", "RLError", "RayEngine", "ReverseDigits", "Rollout", "StepStats",
            "Task", "ThreadEngine", "TinyLM", "TinyLMConfig", "Trainer", "TrainerStopped",
            "SGLangEngine", "VLLMServerEngine", "WeightLayout", "WeightSync", "WeightSyncStats", "WeightSyncTimeout", "dpo_loss",
            "group_advantages", "grpo_loss", "offpolicy_metrics", "token_logprobs",
            "TextTask", "completion_logprobs", "evaluate", "extract_answer", "gsm8k_reward",
            "kl_k3", "load_rows", "supervised_warmup", "train_tokenizer", "word_problems",
        ]
    )  # fmt: skip
    for name in set(surge.rl.__all__) - {"WeightPusher"}:  # a type alias
        assert getattr(surge.rl, name).__doc__, name


@pytest.mark.parametrize(
    ("knobs", "hint"),
    [
        ({"max_staleness": -1}, "max_staleness"),
        ({"max_staleness": 0, "sync_every": 2}, "can never meet"),
        ({"group_size": 1}, "group-relative"),
        ({"max_inflight_tasks": 2, "prompts_per_batch": 4}, "HINT"),
        ({"mode": "fast"}, "mode"),
    ],
)
def test_config_is_validated_with_a_hint(knobs: dict[str, object], hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        RLConfig(**knobs)  # type: ignore[arg-type]


def test_derived_limits_follow_staleness_and_batch() -> None:
    cfg = RLConfig(max_staleness=2, prompts_per_batch=4, grad_accum=2)
    assert cfg.groups_per_step == 8
    assert cfg.inflight_limit == 24 and cfg.queue_limit == 24
    assert RLConfig(mode="sync", max_staleness=3).effective_max_staleness == 0
    assert RLConfig(mode="sync", engine="thread").threads(2) == (2, 2)
    assert RLConfig(mode="async").threads(2) == (1, 1)


# -- admission control, simulated -------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    groups_per_step=st.integers(1, 4),
    bound=st.integers(0, 4),
    sync_every=st.integers(1, 5),
    extra_inflight=st.integers(0, 6),
    schedule=st.lists(st.integers(0, 2), min_size=1, max_size=300),
    durations=st.lists(st.integers(1, 6), min_size=1, max_size=50),
)
def test_admission_never_exceeds_bound_and_never_starves(
    groups_per_step: int,
    bound: int,
    sync_every: int,
    extra_inflight: int,
    schedule: list[int],
    durations: list[int],
) -> None:
    """Random interleavings of generator ticks and trainer steps, with uneven generation
    lengths: every trained ticket lags at most ``bound``, tickets are trained in order,
    and the trainer is never stuck waiting for a ticket that was never admitted."""
    sync_every = min(sync_every, bound + 1)
    limit = (bound + 1) * groups_per_step
    adm = Admission(groups_per_step, bound, limit + extra_inflight)
    step, published = 0, 0
    running: dict[int, tuple[int, int]] = {}  # ticket -> (version used, ticks left)
    done: dict[int, int] = {}
    trained: list[int] = []

    for action in schedule + [2] * 2000:
        if action == 0 or action == 2:  # generator: admit, then advance running work
            for t in adm.admit(published, len(done), limit):
                running[t] = (published, durations[t % len(durations)])
            for t, (v, left) in list(running.items()):
                if left <= 1:
                    del running[t]
                    done[t] = v
                    adm.inflight -= 1
                else:
                    running[t] = (v, left - 1)
        if action == 1 or action == 2:  # trainer: one step if its tickets are all done
            need = range(step * groups_per_step, (step + 1) * groups_per_step)
            if all(t in done for t in need):
                for t in need:
                    assert step - done[t] <= bound
                    assert step - done[t] >= 0
                    done.pop(t)
                    trained.append(t)
                step += 1
                if step % sync_every == 0:
                    published = step
            else:
                missing = [t for t in need if t not in done]
                # every missing ticket is admissible or already running: no starvation
                assert all(
                    t in running or adm.min_version(t) <= published or t >= adm.next_ticket
                    for t in missing
                )
        assert len(done) + len(running) <= limit + extra_inflight
        if step >= 30:
            break
    assert trained == list(range(len(trained)))
    assert step >= 30, "the trainer stalled"


# -- weight sync ------------------------------------------------------------------------


def _model() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(TinyLMConfig(vocab_size=14, d_model=16, d_ff=32, n_layers=1))


def _fill(model: torch.nn.Module, value: float) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, value) for k, v in model.state_dict().items()}


def test_weight_swaps_are_atomic_under_concurrent_publishes() -> None:
    """A reader never sees a model mixing two versions, however publishes interleave."""
    sync = InProcessWeightSync()
    writer_model, reader_model = _model(), _model()
    sync.publish(_fill(writer_model, 0.0), 0)
    stop = threading.Event()

    def writer() -> None:
        for v in range(1, 300):
            sync.publish(_fill(writer_model, float(v)), v)
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    have, seen = -1, set()
    while not stop.is_set() or have < 299:
        have = sync.pull(reader_model, have=have, timeout=10)
        values = {float(t.flatten()[0]) for t in reader_model.state_dict().values()}
        values |= {float(t.min()) for t in reader_model.state_dict().values()}
        values |= {float(t.max()) for t in reader_model.state_dict().values()}
        assert values == {float(have)}, f"half-updated model at version {have}: {values}"
        seen.add(have)
    thread.join()
    assert have == 299
    stats = sync.statistics()
    assert stats.publishes == 300 and stats.pulls == len(seen)
    assert stats.seconds_per_publish >= 0.0


def test_publish_copies_so_later_trainer_updates_do_not_leak() -> None:
    sync = InProcessWeightSync()
    trainer, generator = _model(), _model()
    sync.publish(trainer.state_dict(), 1)
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(1.0)
    sync.pull(generator, have=0)
    for name, t in generator.state_dict().items():
        assert torch.equal(t + (1.0 if "weight" in name or "bias" in name else 0.0),
                           trainer.state_dict()[name])  # fmt: skip


def test_pull_times_out_with_a_hint_and_versions_must_increase() -> None:
    sync = InProcessWeightSync()
    with pytest.raises(WeightSyncTimeout, match="HINT"):
        sync.pull(_model(), have=-1, min_version=3, timeout=0.01)
    sync.publish(_model().state_dict(), 2)
    with pytest.raises(ValueError, match="increase"):
        sync.publish(_model().state_dict(), 2)


# -- generator --------------------------------------------------------------------------


def test_sampling_is_keyed_by_ticket_not_by_batch() -> None:
    task = ReverseDigits(length=4, digits=4)
    model = _model()
    gen = Generator(model, task, group_size=4, seed=1, refresh=lambda mv: 0)
    together = gen.generate([3, 4, 5])
    alone = gen.generate([4])
    assert together[1].prompt == alone[0].prompt
    assert torch.equal(together[1].completions, alone[0].completions)
    assert torch.allclose(together[1].behaviour_logprobs, alone[0].behaviour_logprobs, atol=1e-5)


def test_in_flight_update_tags_each_token_with_its_version() -> None:
    task = ReverseDigits(length=4, digits=4)
    calls = iter(range(100))

    def refresh(min_version: int) -> int:
        return next(calls)  # a new version lands before every token

    gen = Generator(_model(), task, group_size=2, seed=0, refresh=refresh,
                    in_flight_weight_updates=True)  # fmt: skip
    (rollout,) = gen.generate([0])
    versions = rollout.versions[rollout.mask]
    assert rollout.mixed_versions
    for row, row_mask in zip(rollout.versions, rollout.mask, strict=True):
        v = row[row_mask].tolist()
        assert v == sorted(v) and v[0] == 0
    assert rollout.min_version == 0 and rollout.max_version == int(versions.max())
    assert gen.weight_updates_in_flight > 0

    frozen = Generator(_model(), task, group_size=2, seed=0, refresh=lambda mv: 7)
    (same,) = frozen.generate([0])
    assert not same.mixed_versions and same.min_version == 7


# -- losses -----------------------------------------------------------------------------


def test_group_advantages_are_standardised_per_group() -> None:
    adv = group_advantages(torch.tensor([[0.0, 1.0], [2.0, 2.0]]))
    assert torch.allclose(adv[0], torch.tensor([-1.0, 1.0]), atol=1e-4)
    assert torch.equal(adv[1], torch.zeros(2))


@pytest.mark.parametrize("reward", [0.1, 0.2, 0.6, 0.8, 1.0])
def test_a_group_with_equal_rewards_has_exactly_zero_advantage(reward: float) -> None:
    # float32 means of equal values can miss them by a rounding error; eps must not
    # turn that into a spurious push on every member of the group.
    rewards = torch.tensor([[reward] * 8, [0.0, 1.0] * 4])
    adv = group_advantages(rewards)
    assert torch.equal(adv[0], torch.zeros(8))
    assert torch.allclose(adv[1], torch.tensor([-1.0, 1.0] * 4), atol=1e-4)


def test_importance_weights_are_truncated_and_reported() -> None:
    logp = torch.zeros(1, 3, requires_grad=True)
    behaviour = torch.tensor([[0.0, -5.0, 5.0]])  # on-policy, very stale, very unlikely
    mask = torch.ones(1, 3, dtype=torch.bool)
    out = grpo_loss(logp, logp.detach(), behaviour, torch.tensor([1.0]), mask,
                    clip_eps=0.2, is_cap=2.0, total_tokens=3)  # fmt: skip
    out.loss.backward()  # type: ignore[no-untyped-call]
    assert logp.grad is not None
    # weights min(exp(0), 2)=1, min(exp(5), 2)=2, exp(-5): gradient is -w * A / 3
    expected = -torch.tensor([1.0, 2.0, float(torch.exp(torch.tensor(-5.0)))]) / 3
    assert torch.allclose(logp.grad[0], expected, atol=1e-6)
    ess, kl = offpolicy_metrics(logp.detach(), behaviour, mask)
    assert 0.0 < ess < 1.0 and kl > 0.0
    assert offpolicy_metrics(behaviour, behaviour, mask) == (1.0, 0.0)


def test_ppo_clip_stops_the_gradient_past_the_trust_region() -> None:
    logp = torch.tensor([[0.5]], requires_grad=True)  # ratio e^0.5 > 1.2
    out = grpo_loss(logp, torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([1.0]),
                    torch.ones(1, 1, dtype=torch.bool), clip_eps=0.2, is_cap=2.0,
                    total_tokens=1)  # fmt: skip
    out.loss.backward()  # type: ignore[no-untyped-call]
    assert logp.grad is not None and float(logp.grad) == 0.0
    assert out.clip_fraction == 1.0


def test_incremental_decoding_matches_the_full_forward() -> None:
    model = _model().eval()
    x = torch.randint(0, 14, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)
        logits, cache = model.prefill(x[:, :5])
        assert torch.allclose(logits, full[:, 4], atol=1e-5)
        for i in range(5, 9):
            logits, cache = model.decode(x[:, i], cache)
            assert torch.allclose(logits, full[:, i], atol=1e-5)
