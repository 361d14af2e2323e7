"""The GRPO loss family against hand-computed numbers: loss_type, KL (k3), clipping."""

from __future__ import annotations

import math

import pytest
import torch

from surge.rl import RLConfig, group_advantages, grpo_loss, kl_k3


def _loss(logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, **kw: object) -> torch.Tensor:
    out = grpo_loss(
        logp,
        logp.detach(),
        logp.detach(),
        adv,
        mask,
        clip_eps=0.2,
        is_cap=2.0,
        total_tokens=int(mask.sum()),
        **kw,  # type: ignore[arg-type]
    )
    return out.loss


def test_kl_is_zero_when_policy_equals_reference() -> None:
    logp = torch.tensor([[-0.3, -2.0, -5.0]], requires_grad=True)
    assert torch.equal(kl_k3(logp.detach(), logp.detach()), torch.zeros(1, 3))
    out = grpo_loss(
        logp, logp.detach(), logp.detach(), torch.zeros(1), torch.ones(1, 3, dtype=torch.bool),
        clip_eps=0.2, is_cap=2.0, total_tokens=3, ref_logp=logp.detach(), beta=0.5,
    )  # fmt: skip
    out.loss.backward()  # type: ignore[no-untyped-call]
    assert float(out.loss.detach()) == 0.0 and out.kl == 0.0
    assert logp.grad is not None and torch.equal(logp.grad, torch.zeros(1, 3))


def test_kl_value_and_gradient_match_the_hand_computed_example() -> None:
    # k3 = exp(d) - d - 1 with d = ref - logp; d/dlogp k3 = 1 - exp(d).
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    out = grpo_loss(
        logp, logp.detach(), logp.detach(), torch.zeros(1), torch.ones(1, 2, dtype=torch.bool),
        clip_eps=0.2, is_cap=2.0, total_tokens=2, ref_logp=ref, beta=0.5, loss_type="dapo",
    )  # fmt: skip
    k3 = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]  # 0.10653, 0.71828
    assert float(out.loss.detach()) == pytest.approx(0.5 * sum(k3) / 2, rel=1e-6)
    assert out.kl == pytest.approx(sum(k3) / 2, rel=1e-6)
    out.loss.backward()  # type: ignore[no-untyped-call]
    want = [0.5 * (1 - math.exp(-0.5)) / 2, 0.5 * (1 - math.exp(1.0)) / 2]  # 0.0984, -0.4296
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([want]), rtol=1e-6, atol=1e-7)


# Two completions, 1 and 3 tokens long, on-policy (ratio 1), advantages +1 and -0.5: the
# per-token loss is -advantage, so each normalisation is arithmetic on a napkin.
MASK = torch.tensor([[True, False, False], [True, True, True]])
ADV = torch.tensor([1.0, -0.5])


@pytest.mark.parametrize(
    ("loss_type", "value", "grads"),
    [
        # every token of the step weighs the same: (-1 + 3 * 0.5) / 4 tokens
        ("dapo", 0.5 / 4, [[-1 / 4, 0, 0], [0.5 / 4] * 3]),
        # per-completion mean, then over completions: (-1 / 1 + 1.5 / 3) / 2
        ("grpo", -0.25, [[-1 / 2, 0, 0], [0.5 / 6] * 3]),
        # a constant: completions x max_completion_length = 2 x 4
        ("dr_grpo", 0.5 / 8, [[-1 / 8, 0, 0], [0.5 / 8] * 3]),
    ],
)
def test_each_loss_type_matches_the_hand_computed_batch(
    loss_type: str, value: float, grads: list[list[float]]
) -> None:
    logp = torch.zeros(2, 3, requires_grad=True)
    loss = _loss(logp, ADV, MASK, loss_type=loss_type, max_completion_length=4)
    assert float(loss) == pytest.approx(value, rel=1e-6)
    loss.backward()  # type: ignore[no-untyped-call]
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor(grads), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_micro_batches_of_one_step_add_up_to_the_full_batch(loss_type: str) -> None:
    torch.manual_seed(0)
    logp = -torch.rand(6, 5)
    adv = torch.randn(6)
    mask = torch.rand(6, 5) > 0.3
    kw = {
        "clip_eps": 0.2, "is_cap": 2.0, "total_tokens": int(mask.sum()), "loss_type": loss_type,
        "num_completions": 6, "max_completion_length": 5,
    }  # fmt: skip
    whole = grpo_loss(logp, logp, logp, adv, mask, **kw).loss  # type: ignore[arg-type]
    parts = sum(
        grpo_loss(logp[s], logp[s], logp[s], adv[s], mask[s], **kw).loss  # type: ignore[arg-type]
        for s in (slice(0, 2), slice(2, 6))
    )
    assert float(parts) == pytest.approx(float(whole), rel=1e-6)


def test_epsilon_high_clips_the_upside_wider_than_the_downside() -> None:
    prox = torch.zeros(2, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5]]))  # ratios 1.5 (adv +1) and 0.5 (adv -1)
    mask = torch.ones(2, 1, dtype=torch.bool)
    out = grpo_loss(
        logp, prox, prox, torch.tensor([1.0, -1.0]), mask,
        clip_eps=0.2, clip_eps_high=0.28, is_cap=2.0, total_tokens=2,
    )  # fmt: skip
    # min(1.5, 1.28) * 1 and min(0.5 * -1, 0.8 * -1): loss = -(1.28 - 0.8) / 2
    assert float(out.loss) == pytest.approx(-(1.28 - 0.8) / 2, rel=1e-6)
    assert out.clip_fraction == 1.0
    symmetric = grpo_loss(
        logp, prox, prox, torch.tensor([1.0, -1.0]), mask,
        clip_eps=0.2, is_cap=2.0, total_tokens=2,
    )  # fmt: skip
    assert float(symmetric.loss) == pytest.approx(-(1.2 - 0.8) / 2, rel=1e-6)


def test_scale_rewards_group_batch_and_none() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    none = group_advantages(rewards, scale="none")
    assert none.tolist() == [[0.5, -0.5, -0.5, 0.5], [0.0] * 4]
    group = group_advantages(rewards, scale="group")
    torch.testing.assert_close(group[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5, rtol=0)
    batch = group_advantages(rewards, scale="batch")
    std = float(rewards.std(unbiased=False))
    torch.testing.assert_close(batch[0], none[0] / (std + 1e-6))
    assert torch.equal(batch[1], torch.zeros(4))  # a uniform group teaches nothing


def test_config_speaks_trl_and_checks_it() -> None:
    assert RLConfig(scale_rewards=False).scale_rewards == "none"
    assert RLConfig(scale_rewards=True).scale_rewards == "group"
    assert RLConfig().loss_type == "dapo" and RLConfig().beta == 0.0
    with pytest.raises(ValueError, match="loss_type"):
        RLConfig(loss_type="bnpo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="HINT"):
        RLConfig(beta=-0.1)
    with pytest.raises(ValueError, match="epsilon_high"):
        RLConfig(epsilon_high=0.0)
