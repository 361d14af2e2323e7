"""Every knob of the trainer in one frozen record, validated at the door.

The names say what each knob does; the docstring maps them to the names other
frameworks use, so a reader coming from TRL, NeMo-RL, AReaL or PipelineRL finds theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["RLConfig"]

Mode = Literal["sync", "async"]
Algorithm = Literal["grpo", "online_dpo"]
LossType = Literal["grpo", "dr_grpo", "dapo"]
ScaleRewards = Literal["group", "batch", "none"]
EngineKind = Literal["thread", "process"]


@dataclass(frozen=True)
class RLConfig:
    """How to train: the sync/async switch, the staleness bound, the algorithm.

    Overlap and staleness:

    - ``mode``: ``"sync"`` generates a batch, then trains on it, then generates the next
      with the new weights; ``"async"`` generates ahead while the trainer trains. Same
      API, bit-identical results at ``max_staleness=0`` given the same thread counts
      (float sums depend on how ops split across threads).
    - ``max_staleness``: the most policy versions a sample may lag behind the policy that
      trains on it (``max_staleness`` in TRL, ``max_trajectory_age_steps`` in NeMo-RL,
      ``max_head_offpolicyness`` in AReaL). Enforced by admission control: a generation
      starts only if it can be trained on within the bound. ``0`` is on-policy.
    - ``max_inflight_tasks``: prompt groups being generated at once
      (``max_inflight_tasks`` in NeMo-RL); default ``(max_staleness + 1) * groups per step``.
    - ``queue_size``: completed groups that may wait for the trainer; same default.
    - ``sync_every``: publish weights to the generator every this many steps
      (``weight_sync_interval``); must be ``<= max_staleness + 1`` or the bound could
      never be met.
    - ``in_flight_weight_updates``: let new weights land between two tokens of a running
      generation (PipelineRL's in-flight updates); tokens then carry their own versions.

    Batch shape and algorithm:

    - ``prompts_per_batch`` x ``grad_accum`` prompt groups per optimizer step, each of
      ``group_size`` completions (``num_generations`` in TRL).
    - ``algorithm``: ``"grpo"`` (group-relative advantages, PPO clip against the
      trainer's own policy at the start of the step, truncated importance weights against
      the behaviour policy that sampled the tokens, as in AReaL's decoupled objective) or
      ``"online_dpo"`` (best vs worst completion of each group against a frozen reference).
    - ``decoupled``: True takes the PPO ratio against the proximal policy and corrects
      staleness with truncated importance weights (AReaL); False takes it against the
      behaviour policy (classic PPO, TRL's async GRPO), so the clip alone bounds how far
      stale samples pull the policy.
    - ``ppo_epochs``: passes over each batch (``num_iterations`` / mu in TRL).
    - ``epsilon`` and ``epsilon_high`` (TRL's names): the PPO ratio is clipped to
      ``[1 - epsilon, 1 + epsilon_high]``; ``epsilon_high`` defaults to ``epsilon``
      (DAPO's clip-higher uses 0.28 with ``epsilon=0.2``). ``is_cap`` (truncation C of
      importance weights, as in truncated IS / TIS), ``dpo_beta``.
    - ``loss_type``: how the token losses are averaged (TRL's names): ``"grpo"`` per
      completion then over completions, ``"dr_grpo"`` by a constant (completions x
      ``max_new_tokens``), ``"dapo"`` over every token of the step (the default, as in
      TRL).
    - ``beta``: weight of the k3 KL penalty to a frozen copy of the initial policy (TRL's
      ``beta``; 0 keeps no reference model, TRL's default).
    - ``scale_rewards``: divide group-centred rewards by the std of the ``"group"``
      (GRPO), the ``"batch"``, or ``"none"`` (Dr. GRPO); True/False mean group/none.
    - ``mask_truncated_completions``: completions cut at ``max_new_tokens`` before their
      EOS take no part in the loss (their reward still counts in the group baseline).

    Log-probabilities for the loss are computed with the model in eval mode (dropout
    off, TRL's ``disable_dropout``), the mode the generator samples in, so on-policy
    importance weights are 1.

    - ``gradient_checkpointing`` (TRL's name): recompute activations in the backward
      pass instead of keeping them (less memory, one more forward pass per layer). The
      model must have ``gradient_checkpointing_enable()`` (:class:`HFCausalLM` does).
      transformers checkpoints only in train mode, so the trainer then sets every
      dropout probability to 0 and computes log-probabilities in train mode: still
      equal to the generator's, so on-policy importance weights stay 1.

    Placement:

    - ``engine``: ``"thread"`` runs the generator in a thread of this process, with
      in-process weight sync; ``"process"`` runs it in its own process and pushes weights
      with ``torch.distributed`` (gloo; NCCL when trainer and generator are on two GPUs).
    - ``generator_threads`` / ``trainer_threads``: intra-op threads of each side; by
      default each phase gets every core when they take turns in one process (sync mode,
      thread engine) and the sides split the cores otherwise.
    """

    mode: Mode = "async"
    algorithm: Algorithm = "grpo"
    max_staleness: int = 1
    max_inflight_tasks: int | None = None
    queue_size: int | None = None
    sync_every: int = 1
    in_flight_weight_updates: bool = False
    prompts_per_batch: int = 8
    grad_accum: int = 1
    group_size: int = 8
    ppo_epochs: int = 1
    decoupled: bool = True
    lr: float = 1e-3
    epsilon: float = 0.2
    epsilon_high: float | None = None
    is_cap: float = 2.0
    dpo_beta: float = 0.1
    beta: float = 0.0
    loss_type: LossType = "dapo"
    scale_rewards: ScaleRewards | bool = "group"
    mask_truncated_completions: bool = False
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    seed: int = 0
    engine: EngineKind = "thread"
    generator_threads: int | None = None
    trainer_threads: int | None = None
    weight_sync_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', got {self.mode!r}")
        if self.algorithm not in ("grpo", "online_dpo"):
            raise ValueError(f"algorithm must be 'grpo' or 'online_dpo', got {self.algorithm!r}")
        if self.engine not in ("thread", "process"):
            raise ValueError(f"engine must be 'thread' or 'process', got {self.engine!r}")
        if self.max_staleness < 0:
            raise ValueError(
                f"max_staleness must be >= 0, got {self.max_staleness}. "
                "HINT: 0 is on-policy; 1-4 is the usual range for async RL."
            )
        for name in ("prompts_per_batch", "grad_accum", "group_size", "ppo_epochs", "sync_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(
                f"group_size must be >= 2, got {self.group_size}. HINT: group-relative "
                "advantages and DPO pairs compare completions of the same prompt."
            )
        if self.sync_every > self.max_staleness + 1:
            raise ValueError(
                f"sync_every={self.sync_every} can never meet max_staleness="
                f"{self.max_staleness}. HINT: use sync_every <= max_staleness + 1."
            )
        for name in ("max_inflight_tasks", "queue_size", "generator_threads", "trainer_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.max_inflight_tasks is not None and self.max_inflight_tasks < self.groups_per_step:
            raise ValueError(
                f"max_inflight_tasks={self.max_inflight_tasks} is below the "
                f"{self.groups_per_step} groups one step needs. HINT: leave it None."
            )
        if self.lr <= 0 or self.epsilon <= 0 or self.is_cap <= 0 or self.dpo_beta <= 0:
            raise ValueError("lr, epsilon, is_cap and dpo_beta must be > 0")
        if self.epsilon_high is not None and self.epsilon_high <= 0:
            raise ValueError(
                f"epsilon_high must be > 0 or None, got {self.epsilon_high}. HINT: DAPO "
                "uses 0.28 with epsilon=0.2."
            )
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}. HINT: 0 turns the KL off.")
        if self.loss_type not in ("grpo", "dr_grpo", "dapo"):
            raise ValueError(
                f"loss_type must be 'grpo', 'dr_grpo' or 'dapo', got {self.loss_type!r}"
            )
        if isinstance(self.scale_rewards, bool):  # TRL's older spelling
            object.__setattr__(self, "scale_rewards", "group" if self.scale_rewards else "none")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(
                f"scale_rewards must be 'group', 'batch' or 'none', got {self.scale_rewards!r}"
            )
        if self.weight_sync_timeout <= 0:
            raise ValueError("weight_sync_timeout must be > 0 seconds")

    @property
    def groups_per_step(self) -> int:
        """Prompt groups one optimizer step consumes."""
        return self.prompts_per_batch * self.grad_accum

    @property
    def effective_max_staleness(self) -> int:
        """The bound actually enforced: 0 in sync mode, whatever was asked otherwise."""
        return 0 if self.mode == "sync" else self.max_staleness

    @property
    def inflight_limit(self) -> int:
        if self.max_inflight_tasks is not None:
            return self.max_inflight_tasks
        return (self.effective_max_staleness + 1) * self.groups_per_step

    @property
    def queue_limit(self) -> int:
        if self.queue_size is not None:
            return max(self.queue_size, self.groups_per_step)
        return (self.effective_max_staleness + 1) * self.groups_per_step

    def threads(self, cores: int) -> tuple[int, int]:
        """Intra-op threads for (generator, trainer) given ``cores`` to share."""
        # Phases that take turns in one process may each use every core. Sides that can
        # run at once split them: OpenMP workers spin for a while after each op, so two
        # processes with all cores each would fight even while "taking turns".
        take_turns = self.mode == "sync" and self.engine == "thread"
        default = max(1, cores) if take_turns else max(1, cores // 2)
        gen = self.generator_threads or default
        train = self.trainer_threads or (default if take_turns else max(1, cores - gen))
        return gen, train
