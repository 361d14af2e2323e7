"""Rollouts and the generator that produces them.

Every generated token carries the policy version that produced it. When a weight update
lands mid-generation (``in_flight_weight_updates``), later tokens of the same completion
carry the newer version; the sample's lag is then measured from its *oldest* token, the
conservative choice.

Sampling is keyed by ticket, not by call order: the prompt of ticket ``t`` and the
Gumbel noise that picks each of its tokens are drawn from generators seeded with
``(seed, t)``. So the same weights produce the same samples whether a ticket is
generated alone, in a batch, in the trainer's thread or in a generator thread — which is
what makes ``max_staleness=0`` reproduce synchronous training bit for bit, and resume
continue exactly where it stopped.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from surge.rl._device import model_device
from surge.rl._task import Task
from surge.rl._text import IncrementalDecoder, left_pad

__all__ = ["Generator", "Rollout", "rollout_from_dict", "rollout_to_dict"]


@dataclass
class Rollout:
    """One prompt and its group of sampled completions, ready for the trainer.

    ``completions``, ``mask``, ``behaviour_logprobs`` and ``versions`` are ``[G, T]``;
    ``mask`` is True on generated tokens (up to and including EOS).
    """

    ticket: int
    prompt: list[int]
    completions: torch.Tensor
    mask: torch.Tensor
    behaviour_logprobs: torch.Tensor
    versions: torch.Tensor
    rewards: torch.Tensor

    min_version: int = field(init=False)
    """Version of the oldest token: the one that bounds this sample's lag."""
    max_version: int = field(init=False)

    def __post_init__(self) -> None:
        # Computed once, where the rollout is made: the trainer reads them every step,
        # and each tensor op it saves there is one less GIL hand-off beside a generator.
        if bool(self.mask.any()):
            made_by = self.versions[self.mask]
            self.min_version, self.max_version = int(made_by.min()), int(made_by.max())
        else:
            self.min_version = self.max_version = 0

    @property
    def mixed_versions(self) -> bool:
        """True when a weight update landed while this group was being generated."""
        return self.min_version != self.max_version


def rollout_to_dict(r: Rollout) -> dict[str, object]:
    """Plain-data form of a rollout, for checkpoints and inter-process queues."""
    return {
        "ticket": r.ticket,
        "prompt": list(r.prompt),
        "completions": r.completions,
        "mask": r.mask,
        "behaviour_logprobs": r.behaviour_logprobs,
        "versions": r.versions,
        "rewards": r.rewards,
    }


def rollout_from_dict(d: dict[str, object]) -> Rollout:
    return Rollout(**d)  # type: ignore[arg-type]


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers, stable across runs and platforms."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h >> 1


class Generator:
    """Samples groups of completions from its own copy of the policy.

    The copy is private to the thread (or process) that runs the generator; weights reach
    it only through ``refresh``, called between forward passes, so it never reads a
    half-updated model. Sampling runs on the model's device; the rollouts come back on
    the CPU (they cross threads, processes and checkpoints), and the Gumbel noise is drawn
    on the CPU, so a ticket samples the same tokens on any device up to float rounding.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        *,
        group_size: int,
        seed: int,
        refresh: Callable[[int], int],
        in_flight_weight_updates: bool = False,
    ) -> None:
        self.model = model
        self.task = task
        self.group_size = group_size
        self.seed = seed
        self.in_flight_weight_updates = in_flight_weight_updates
        self._refresh = refresh
        self.version = -1
        self.busy_seconds = 0.0
        self.weight_updates_in_flight = 0

    def prompt(self, ticket: int) -> list[int]:
        return self.task.sample_prompt(random.Random(_mix(self.seed, ticket)))

    def _noise(self, ticket: int, member: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_mix(self.seed, ticket, member, 0x5EED))
        u = torch.rand(self.task.max_new_tokens, self.task.vocab_size, generator=g)
        return -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))

    @torch.no_grad()
    def generate(self, tickets: list[int], *, min_version: int = -1) -> list[Rollout]:
        """Sample ``group_size`` completions for each ticket's prompt, in one batch.

        First pulls the newest weights, waiting for at least ``min_version`` (the oldest
        the staleness bound allows for these tickets).
        """
        task, g = self.task, self.group_size
        self.version = self._refresh(min_version)
        start = time.perf_counter()
        prompts = [self.prompt(t) for t in tickets]
        dev = model_device(self.model)
        # Prompts of different lengths are left-padded, with a mask (None when they all
        # have the same length, so mask-less models keep working).
        rows, prompt_mask = left_pad([p for p in prompts for _ in range(g)], task.pad_id)
        rows = rows.to(dev)
        noise = torch.stack([self._noise(t, m) for t in tickets for m in range(g)]).to(dev)
        n, steps = rows.shape[0], task.max_new_tokens
        out = torch.full((n, steps), task.pad_id, dtype=torch.long, device=dev)
        logp = torch.zeros(n, steps, device=dev)
        versions = torch.zeros(n, steps, dtype=torch.long, device=dev)
        mask = torch.zeros(n, steps, dtype=torch.bool, device=dev)
        alive = torch.ones(n, dtype=torch.bool, device=dev)
        decoder = IncrementalDecoder(
            self.model, rows, None if prompt_mask is None else prompt_mask.to(dev)
        )
        for i in range(steps):
            if self.in_flight_weight_updates and i > 0:
                new = self._refresh(-1)
                if new != self.version:
                    # The cached keys/values of earlier tokens stay as the old weights made
                    # them (as PipelineRL does); the new token's version says which weights
                    # chose it.
                    self.weight_updates_in_flight += 1
                    self.version = new
            logits = torch.log_softmax(decoder.logits().float(), dim=-1)
            tok = torch.argmax(logits + noise[:, i], dim=-1)
            tok = torch.where(alive, tok, torch.full_like(tok, task.pad_id))
            out[:, i] = tok
            logp[:, i] = torch.where(alive, logits.gather(-1, tok[:, None])[:, 0], 0.0)
            versions[:, i] = self.version
            mask[:, i] = alive
            alive = alive & (tok != task.eos_id)
            if not bool(alive.any()):
                break
            decoder.append(tok)
        out, logp, versions, mask = (x.cpu() for x in (out, logp, versions, mask))
        result = []
        for j, (ticket, prompt) in enumerate(zip(tickets, prompts, strict=True)):
            sl = slice(j * g, (j + 1) * g)
            rewards = []
            for r in range(j * g, (j + 1) * g):
                toks = out[r][mask[r]].tolist()
                if toks and toks[-1] == task.eos_id:
                    toks = toks[:-1]
                rewards.append(task.reward(prompt, toks))
            result.append(
                Rollout(
                    ticket=ticket,
                    prompt=prompt,
                    completions=out[sl].clone(),
                    mask=mask[sl].clone(),
                    behaviour_logprobs=logp[sl].clone(),
                    versions=versions[sl].clone(),
                    rewards=torch.tensor(rewards),
                )
            )
        self.busy_seconds += time.perf_counter() - start
        return result
