"""Policy losses with importance correction, and the off-policy diagnostics they log.

GRPO here is the decoupled PPO objective (AReaL, Fu et al. 2025,
https://arxiv.org/abs/2505.24298): the PPO ratio is taken against the *proximal* policy —
the trainer's own weights at the start of the step — so clipping limits how far one step
moves, whatever the staleness; the gap between proximal and *behaviour* policy (the stale
weights that sampled the tokens) is corrected by importance weights truncated at
``is_cap`` (truncated IS, as in IMPALA's V-trace and TIS), which bounds their variance.

Online DPO (Guo et al. 2024, https://arxiv.org/abs/2402.04792) needs no correction: it
was the most robust to off-policy samples in Noukhovitch et al. 2024
(https://arxiv.org/abs/2410.18252).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LossOutput", "dpo_loss", "group_advantages", "grpo_loss", "offpolicy_metrics"]


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor
    clip_fraction: float


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rewards ``[P, G]`` standardised within each group: GRPO's critic-free baseline.

    A group whose rewards are all equal has nothing to teach and gets exactly 0: its
    float mean can miss the common value by a rounding error (eight 0.6s average to
    0.6 - 6e-8 in float32), which ``eps`` alone would blow up to an advantage of 0.06.
    """
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    uniform = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)
    return torch.where(uniform, 0.0, (rewards - mean) / (std + eps))


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
) -> LossOutput:
    """Decoupled PPO-clip loss, summed over tokens and divided by ``total_tokens``.

    ``logp`` carries gradients; ``prox_logp`` and ``behaviour_logp`` do not. All are
    ``[N, T]``; ``advantages`` is ``[N]`` (one per completion).
    """
    m = mask.float()
    adv = advantages[:, None]
    ratio = torch.exp(logp - prox_logp)
    weight = torch.exp(prox_logp - behaviour_logp).clamp(max=is_cap).detach()
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
    per_token = -weight * torch.minimum(unclipped, clipped)
    loss = (per_token * m).sum() / max(total_tokens, 1)
    with torch.no_grad():
        was_clipped = (clipped < unclipped).float()
        clip_fraction = float((was_clipped * m).sum() / m.sum().clamp(min=1.0))
    return LossOutput(loss=loss, clip_fraction=clip_fraction)


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
