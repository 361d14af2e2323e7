"""Policy losses with importance correction, and the off-policy diagnostics they log.

GRPO here is the decoupled PPO objective (AReaL, Fu et al. 2025,
https://arxiv.org/abs/2505.24298): the PPO ratio is taken against the *proximal* policy —
the trainer's own weights at the start of the step — so clipping limits how far one step
moves, whatever the staleness; the gap between proximal and *behaviour* policy (the stale
weights that sampled the tokens) is corrected by importance weights truncated at
``is_cap`` (truncated IS, as in IMPALA's V-trace and TIS), which bounds their variance.

Loss normalisation follows TRL's ``loss_type``: ``"grpo"`` averages each completion's
tokens, then the completions (long completions weigh less per token); ``"dr_grpo"``
divides the token sum by a constant, completions x ``max_new_tokens`` (Liu et al. 2025,
https://arxiv.org/abs/2503.20783); ``"dapo"`` divides by the number of tokens in the whole
step (Yu et al. 2025, https://arxiv.org/abs/2503.14476), so every token weighs the same.
``beta > 0`` adds the ``k3`` estimate of KL(policy || reference) per token, as TRL does.

Online DPO (Guo et al. 2024, https://arxiv.org/abs/2402.04792) needs no correction: it
was the most robust to off-policy samples in Noukhovitch et al. 2024
(https://arxiv.org/abs/2410.18252).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "LOSS_TYPES",
    "LossOutput",
    "dpo_loss",
    "group_advantages",
    "grpo_loss",
    "kl_k3",
    "offpolicy_metrics",
]

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
LossType = Literal["grpo", "dr_grpo", "dapo"]
ScaleRewards = Literal["group", "batch", "none"]


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor
    clip_fraction: float
    kl: float = 0.0
    """Mean ``k3`` KL to the reference over the loss's tokens (0 without a reference)."""


def group_advantages(
    rewards: torch.Tensor, eps: float = 1e-6, *, scale: ScaleRewards = "group"
) -> torch.Tensor:
    """Rewards ``[P, G]`` minus their group mean: GRPO's critic-free baseline.

    ``scale`` (TRL's ``scale_rewards``) divides by the standard deviation of the group
    (``"group"``, GRPO), of the whole batch (``"batch"``), or not at all (``"none"``,
    Dr. GRPO: dividing by a small std over-weights nearly-solved prompts).

    A group whose rewards are all equal has nothing to teach and gets exactly 0: its
    float mean can miss the common value by a rounding error (eight 0.6s average to
    0.6 - 6e-8 in float32), which ``eps`` alone would blow up to an advantage of 0.06.
    """
    mean = rewards.mean(dim=1, keepdim=True)
    uniform = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)
    centred = rewards - mean
    if scale == "group":
        centred = centred / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps)
    elif scale == "batch":
        centred = centred / (rewards.std(unbiased=False) + eps)
    elif scale != "none":
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return torch.where(uniform, 0.0, centred)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token ``k3`` estimate of KL(policy || reference): ``exp(d) - d - 1`` with
    ``d = ref - logp``; non-negative, unbiased, low variance
    (http://joschu.net/blog/kl-approx.html). Zero where the two agree."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def grpo_loss(
    logp: torch.Tensor,
    prox_logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float,
    is_cap: float,
    total_tokens: int,
    clip_eps_high: float | None = None,
    loss_type: LossType = "dapo",
    num_completions: int | None = None,
    max_completion_length: int | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
) -> LossOutput:
    """Decoupled PPO-clip loss (plus ``beta`` x k3 KL to ``ref_logp``), normalised as
    ``loss_type`` says.

    ``logp`` carries gradients; ``prox_logp``, ``behaviour_logp`` and ``ref_logp`` do
    not. All are ``[N, T]``; ``advantages`` is ``[N]`` (one per completion). The ratio is
    clipped to ``[1 - clip_eps, 1 + clip_eps_high]`` (DAPO's clip-higher; the same on
    both sides by default). The denominators count the whole optimizer step, so
    micro-batches of one step sum to the full-batch loss:

    - ``"dapo"``: ``total_tokens``, the masked tokens of the step;
    - ``"grpo"``: each completion's own token count, then ``num_completions``;
    - ``"dr_grpo"``: ``num_completions * max_completion_length``.
    """
    m = mask.float()
    adv = advantages[:, None]
    high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logp - prox_logp)
    weight = torch.exp(prox_logp - behaviour_logp).clamp(max=is_cap).detach()
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + high) * adv
    per_token = -weight * torch.minimum(unclipped, clipped)
    kl_value = 0.0
    if ref_logp is not None and beta != 0.0:
        kl = kl_k3(logp, ref_logp)
        per_token = per_token + beta * kl
        with torch.no_grad():
            kl_value = float((kl * m).sum() / m.sum().clamp(min=1.0))
    n = num_completions if num_completions is not None else logp.shape[0]
    if loss_type == "dapo":
        loss = (per_token * m).sum() / max(total_tokens, 1)
    elif loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).sum() / max(n, 1)
    elif loss_type == "dr_grpo":
        length = max_completion_length if max_completion_length is not None else logp.shape[1]
        loss = (per_token * m).sum() / max(n * length, 1)
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    with torch.no_grad():
        was_clipped = (clipped < unclipped).float()
        clip_fraction = float((was_clipped * m).sum() / m.sum().clamp(min=1.0))
    return LossOutput(loss=loss, clip_fraction=clip_fraction, kl=kl_value)


def dpo_loss(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """Mean DPO loss over pairs; inputs are per-sequence summed log-probabilities ``[P]``."""
    margin = (chosen_logp - ref_chosen_logp) - (rejected_logp - ref_rejected_logp)
    return -F.logsigmoid(beta * margin).mean()


@torch.no_grad()
def offpolicy_metrics(
    policy_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor
) -> tuple[float, float]:
    """(normalised effective sample size, KL(behaviour || policy)) over masked tokens.

    ESS is ``(sum w)^2 / (n sum w^2)`` of the untruncated weights ``pi/mu``: 1.0 when the
    samples are on-policy, falling as they go stale. KL uses the non-negative, low-variance
    ``k3`` estimator ``(r - 1) - log r`` (http://joschu.net/blog/kl-approx.html).
    """
    sel = mask.bool()
    if not bool(sel.any()):
        return 1.0, 0.0
    log_r = (policy_logp - behaviour_logp)[sel].double()
    w = torch.exp(log_r)
    ess = float(w.sum() ** 2 / (w.numel() * (w**2).sum()))
    kl = float(((w - 1.0) - log_r).mean())
    return ess, kl
