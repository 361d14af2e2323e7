"""The trainer: one loop, a sync/async switch, bounded staleness, checkpoint and resume.

Synchronous mode submits the tickets of step ``s`` with the weights of version ``s``,
waits for them, and trains. Asynchronous mode adds a feeder thread that admits tickets
ahead of the trainer, as far as the staleness bound allows (see ``_admission``), so the
generator works on step ``s + 1 .. s + k`` while the trainer trains on step ``s``. Both
modes consume rollouts through the same queue, in ticket order, with the same update, so
``max_staleness=0`` reproduces synchronous training exactly.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surge.rl._admission import Admission, RolloutBuffer
from surge.rl._config import RLConfig
from surge.rl._device import Device, resolve_device
from surge.rl._engines import Engine, OnError, OnResult, ProcessEngine, ThreadEngine
from surge.rl._errors import TrainerStopped
from surge.rl._losses import dpo_loss, group_advantages, grpo_loss, offpolicy_metrics
from surge.rl._rollout import Rollout, rollout_from_dict, rollout_to_dict
from surge.rl._task import Task
from surge.rl._text import completion_logprobs

__all__ = ["StepStats", "Trainer"]

_CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step did, reported every step (progress bar, benchmark, tests).

    ``lag_*`` are policy versions between the step's weights and the oldest token of each
    group it trained on; ``tickets`` are the prompt groups it consumed, in order.
    ``kl`` is the drift KL(behaviour || policy) of the samples, ``ref_kl`` the k3 KL to
    the reference (0 unless ``beta > 0``), ``entropy`` the policy's mean per-token
    entropy on the sampled completions. ``update_seconds`` is this step's optimizer
    update; ``train_seconds`` and ``generation_seconds`` add up all steps so far.
    """

    step: int
    version: int
    wall_seconds: float
    reward_mean: float
    lag_min: int
    lag_mean: float
    lag_max: int
    dropped: int
    queue_depth: int
    generator_busy: float
    trainer_busy: float
    ess: float
    clip_fraction: float
    kl: float
    loss: float
    weight_sync_seconds: float
    in_flight_weight_updates: int
    mixed_version_groups: int
    tokens: int
    tickets: tuple[int, ...]
    entropy: float = 0.0
    ref_kl: float = 0.0
    update_seconds: float = 0.0
    train_seconds: float = 0.0
    generation_seconds: float = 0.0


def _enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on the model's activation checkpointing and switch dropout off for good
    (TRL's ``disable_dropout_in_model``): checkpointing needs train mode, and dropout in
    train mode would make the trainer's log-probabilities differ from the generator's."""
    enable: Any = getattr(model, "gradient_checkpointing_enable", None)
    if not callable(enable):
        raise ValueError(
            f"gradient_checkpointing=True, but {type(model).__name__} has no "
            "gradient_checkpointing_enable(). HINT: wrap a transformers model in "
            "HFCausalLM, or set gradient_checkpointing=False."
        )
    enable()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):  # Dropout, Dropout1d, ...
            module.p = 0.0


class Trainer:
    """RL trainer for a language model on a verifiable task, synchronous or asynchronous.

    Example::

        task = ReverseDigits(length=5)
        torch.manual_seed(0)
        model = TinyLM(TinyLMConfig(vocab_size=task.vocab_size))
        trainer = Trainer(model, task, RLConfig(mode="async", max_staleness=2))
        for stats in trainer.run(steps=100):
            print(stats.step, stats.reward_mean, stats.lag_max)

    ``cores`` is the CPU budget the generator and trainer share (default: this process's
    affinity). ``engine_factory`` replaces the built-in engines: it receives the trainer's
    result and error callbacks and returns an :class:`~surge.rl.Engine`, for example an
    :class:`~surge.rl.OpenAIEngine` in front of a vLLM server.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        config: RLConfig | None = None,
        *,
        cores: int | None = None,
        engine_factory: Callable[[OnResult, OnError], Engine] | None = None,
        device: Device | None = None,
        generator_device: Device | None = None,
    ) -> None:
        # Where the policy trains and where the built-in engines sample (default: CUDA
        # when present, else the CPU; the generator defaults to the trainer's device).
        self.device = resolve_device(device, what="device")
        self.generator_device = resolve_device(
            self.device if generator_device is None else generator_device, what="generator_device"
        )
        self.model = model.to(self.device)
        self.task = task
        self.config = config or RLConfig()
        if cores is None:
            affinity = getattr(os, "sched_getaffinity", None)  # absent on macOS
            cores = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
        self.cores = max(1, cores)
        self.engine_factory = engine_factory
        if self.config.gradient_checkpointing:
            _enable_gradient_checkpointing(self.model)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=self.config.lr, weight_decay=0.0)
        self.ref_model: nn.Module | None = None
        if self.config.algorithm == "online_dpo" or self.config.beta > 0:
            # A frozen copy of the initial policy: DPO's reference, and the KL anchor.
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.step = 0
        self.dropped = 0
        self.history: list[StepStats] = []
        self._buffer = RolloutBuffer()
        self._admission = self._new_admission(0)
        self._published = -1
        self._stop = False
        self._train_seconds = 0.0
        self._last_update_seconds = 0.0

    def reset_reference(self) -> None:
        """Make the current weights the frozen reference (DPO's, and the KL anchor of
        ``beta``): call it after changing the weights outside training, a warm-up say."""
        if self.ref_model is not None:
            self.ref_model.load_state_dict(self.model.state_dict())

    # -- properties ----------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Policy version of the trainer's weights: the number of optimizer steps taken."""
        return self.step

    def _new_admission(self, next_ticket: int) -> Admission:
        cfg = self.config
        return Admission(
            groups_per_step=cfg.groups_per_step,
            max_staleness=cfg.effective_max_staleness,
            max_inflight=cfg.inflight_limit,
            next_ticket=next_ticket,
        )

    # -- the loop ------------------------------------------------------------------------

    def train(
        self, steps: int, *, on_step: Callable[[StepStats], None] | None = None
    ) -> list[StepStats]:
        """Run ``steps`` optimizer steps; return their statistics."""
        out = []
        for stats in self.run(steps):
            out.append(stats)
            if on_step is not None:
                on_step(stats)
        return out

    def run(self, steps: int) -> Iterator[StepStats]:
        """Run ``steps`` optimizer steps, yielding statistics after each.

        The generator starts before the first step and stops when the iterator finishes
        (or is closed); completed rollouts not yet trained on stay queued for the next
        call and for :meth:`save_checkpoint`.
        """
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        cfg = self.config
        gen_threads, train_threads = cfg.threads(self.cores)
        saved_threads = torch.get_num_threads()
        torch.set_num_threads(train_threads)
        self._stop = False
        self._buffer.error = None
        self._drop_hopeless()
        engine = self._start_engine(gen_threads)
        feeder: threading.Thread | None = None
        try:
            self._publish(engine)
            if cfg.mode == "async":
                feeder = threading.Thread(
                    target=self._feed, args=(engine,), name="surge-rl-feeder", daemon=True
                )
                feeder.start()
            start = time.perf_counter()
            self._train_seconds = 0.0
            for _ in range(steps):
                if cfg.mode == "sync":
                    self._submit_admissible(engine)
                rollouts = self._collect()
                t0 = time.perf_counter()
                metrics = self._update(rollouts)
                self._last_update_seconds = time.perf_counter() - t0
                self._train_seconds += self._last_update_seconds
                self.step += 1
                if self.step % cfg.sync_every == 0:
                    self._publish(engine)
                stats = self._stats(rollouts, metrics, engine, start)
                self.history.append(stats)
                yield stats
        finally:
            with self._buffer.cond:
                self._stop = True
                self._buffer.cond.notify_all()
            if feeder is not None:
                feeder.join()
            engine.close()
            self._settle_queue()
            torch.set_num_threads(saved_threads)

    def _start_engine(self, threads: int) -> Engine:
        if self.engine_factory is not None:
            return self.engine_factory(self._on_result, self._buffer.fail)
        cfg = self.config
        kind = ProcessEngine if cfg.engine == "process" else ThreadEngine
        return kind(
            self.model,
            self.task,
            group_size=cfg.group_size,
            seed=cfg.seed,
            threads=threads,
            in_flight_weight_updates=cfg.in_flight_weight_updates,
            timeout=cfg.weight_sync_timeout,
            on_result=self._on_result,
            on_error=self._buffer.fail,
            device=self.generator_device,
        )

    def _publish(self, engine: Engine) -> None:
        engine.publish(self.model.state_dict(), self.step)
        with self._buffer.cond:
            self._published = self.step
            self._buffer.cond.notify_all()

    def _on_result(self, rollouts: list[Rollout]) -> None:
        with self._buffer.cond:
            self._admission.inflight -= len(rollouts)
            self._buffer.put(rollouts)

    def _submit_admissible(self, engine: Engine) -> bool:
        with self._buffer.cond:
            tickets = self._admission.admit(
                self._published, self._buffer.depth(), self.config.queue_limit
            )
        if tickets:
            min_version = max(self._admission.min_version(t) for t in tickets)
            engine.submit(tickets, min_version)
        return bool(tickets)

    def _feed(self, engine: Engine) -> None:
        """Async mode: start every generation the bound admits, as soon as it admits it."""
        cond = self._buffer.cond
        while True:
            with cond:
                while not self._stop:
                    tickets = self._admission.admit(
                        self._published, self._buffer.depth(), self.config.queue_limit
                    )
                    if tickets:
                        break
                    cond.wait()
                if self._stop:
                    return
                min_version = max(self._admission.min_version(t) for t in tickets)
            engine.submit(tickets, min_version)

    def _collect(self) -> list[Rollout]:
        """The rollouts of this step's tickets, in ticket order; stale ones are re-queued."""
        cfg = self.config
        bound = cfg.effective_max_staleness
        first = self.step * cfg.groups_per_step
        out: list[Rollout] = []
        cond = self._buffer.cond
        with cond:
            for ticket in range(first, first + cfg.groups_per_step):
                while True:
                    if self._buffer.error is not None:
                        raise TrainerStopped("generation failed") from self._buffer.error
                    r = self._buffer.pop(ticket)
                    if r is None:
                        if not cond.wait(timeout=cfg.weight_sync_timeout):
                            raise TrainerStopped(
                                f"no rollout for ticket {ticket} within "
                                f"{cfg.weight_sync_timeout}s. HINT: is the generator alive? "
                                "Raise weight_sync_timeout for very long generations."
                            )
                        continue
                    if self.step - r.min_version > bound:
                        self.dropped += 1
                        self._admission.retry.append(ticket)
                        self._admission.retry.sort()
                        cond.notify_all()
                        continue
                    out.append(r)
                    break
            cond.notify_all()
        return out

    def _drop_hopeless(self) -> None:
        """Backstop: drop queued rollouts that could only be trained beyond the bound.

        Admission control makes this a no-op in a running trainer; it matters when a
        queue saved under a looser bound is resumed under a tighter one.
        """
        bound = self.config.effective_max_staleness
        with self._buffer.cond:
            for r in self._buffer.snapshot():
                if self._admission.step_of(r.ticket) - r.min_version > bound:
                    self._buffer.pop(r.ticket)
                    self.dropped += 1
                    self._admission.retry.append(r.ticket)
            self._admission.retry.sort()

    def _contiguous_queue(self) -> tuple[list[Rollout], int]:
        """Finished rollouts from this step's first ticket up to the first gap, and the
        ticket after them: the queue state a resume can rely on. Tickets beyond the gap
        (finished early, or still being generated) are generated again after a resume."""
        with self._buffer.cond:
            kept = {r.ticket: r for r in self._buffer.snapshot()}
        ticket = self.step * self.config.groups_per_step
        run = []
        while ticket in kept:
            run.append(kept[ticket])
            ticket += 1
        return run, ticket

    def _settle_queue(self) -> None:
        """After the generator stopped: keep the contiguous run of finished tickets."""
        run, next_ticket = self._contiguous_queue()
        with self._buffer.cond:
            self._buffer.clear()
            self._buffer.put(run)
            self._admission = self._new_admission(next_ticket)

    # -- the update ----------------------------------------------------------------------

    def _update(self, rollouts: list[Rollout]) -> dict[str, float]:
        cfg = self.config
        # Dropout off (TRL's disable_dropout): log-probabilities in the mode the generator
        # sampled in, so on-policy importance weights are exactly what sampling saw. With
        # checkpointing, train mode (transformers checkpoints only there) with every
        # dropout probability already set to 0: the same numbers.
        self.model.train(cfg.gradient_checkpointing)
        try:
            return self._update_in_mode(rollouts)
        finally:
            self.model.eval()

    def _update_in_mode(self, rollouts: list[Rollout]) -> dict[str, float]:
        cfg, task = self.config, self.task
        dev = self.device
        completions = torch.cat([r.completions for r in rollouts]).to(dev)
        mask = torch.cat([r.mask for r in rollouts]).to(dev)
        width = int(mask.any(dim=0).nonzero().max()) + 1 if bool(mask.any()) else 1
        completions, mask = completions[:, :width], mask[:, :width]
        behaviour = torch.cat([r.behaviour_logprobs for r in rollouts])[:, :width].to(dev)
        prompts = [r.prompt for r in rollouts for _ in range(cfg.group_size)]
        rewards = torch.stack([r.rewards for r in rollouts]).float().to(dev)
        total_generated = int(mask.sum())
        loss_mask = mask
        if cfg.mask_truncated_completions:
            ended = (mask & (completions == task.eos_id)).any(dim=1)
            loss_mask = mask & ended[:, None]
        if cfg.algorithm == "online_dpo":
            return self._dpo_update(prompts, completions, loss_mask, behaviour, rewards)
        adv = group_advantages(rewards, scale=cfg.scale_rewards).reshape(-1)  # type: ignore[arg-type]
        total = int(loss_mask.sum())  # "dapo": the loss stays a mean over every token
        num_completions = adv.numel()
        # A completion whose advantage is exactly 0 (every member of an all-correct group,
        # for one) adds exactly nothing to the policy gradient; late in training that is
        # most of the batch, so the forward and backward passes skip it. Not with a KL
        # penalty: that pulls on every completion.
        trained = (adv != 0).nonzero().flatten()
        if cfg.beta == 0 and trained.numel() < adv.numel():
            completions, mask, loss_mask, behaviour, adv = (
                x[trained] for x in (completions, mask, loss_mask, behaviour, adv)
            )
            prompts = [prompts[i] for i in trained.tolist()]
        n = completions.shape[0]
        micro = [
            slice(i * n // cfg.grad_accum, (i + 1) * n // cfg.grad_accum)
            for i in range(cfg.grad_accum)
        ]
        micro = [mb for mb in micro if mb.stop > mb.start]
        pad = task.pad_id
        prox: torch.Tensor | None = None
        ref: torch.Tensor | None = None
        with torch.no_grad():
            if cfg.ppo_epochs > 1 and n:  # later epochs need the policy as it was at first
                prox = completion_logprobs(self.model, prompts, completions, pad)[0]
            if self.ref_model is not None and cfg.beta > 0 and n:
                ref = completion_logprobs(self.ref_model, prompts, completions, pad)[0]
        loss_sum, clip_sum, kl_sum, prox_parts, entropy_parts = 0.0, 0.0, 0.0, [], []
        for epoch in range(cfg.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            for mb in micro:
                logp, entropy = completion_logprobs(
                    self.model, prompts[mb], completions[mb], pad, entropy=epoch == 0
                )
                mb_prox = prox[mb] if prox is not None else logp.detach()
                if epoch == 0:
                    prox_parts.append(mb_prox)
                    assert entropy is not None
                    entropy_parts.append(entropy)
                if not cfg.decoupled:
                    # Classic PPO with the behaviour policy as the old policy: the clip
                    # itself bounds how far stale samples can pull the policy.
                    mb_prox = behaviour[mb]
                out = grpo_loss(
                    logp,
                    mb_prox,
                    behaviour[mb],
                    adv[mb],
                    loss_mask[mb],
                    clip_eps=cfg.epsilon,
                    clip_eps_high=cfg.epsilon_high,
                    is_cap=cfg.is_cap,
                    total_tokens=total,
                    loss_type=cfg.loss_type,
                    num_completions=num_completions,
                    max_completion_length=task.max_new_tokens,
                    ref_logp=ref[mb] if ref is not None else None,
                    beta=cfg.beta,
                )
                out.loss.backward()  # type: ignore[no-untyped-call]
                loss_sum += float(out.loss.detach())
                clip_sum += out.clip_fraction / len(micro)
                kl_sum += out.kl / len(micro)
            if not micro:  # a zero gradient still steps the optimizer, as it would unskipped
                for p in self.model.parameters():
                    p.grad = torch.zeros_like(p)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
        ess, kl = offpolicy_metrics(torch.cat(prox_parts), behaviour, mask) if n else (1.0, 0.0)
        if n:
            entropy_mean = float(torch.cat(entropy_parts)[mask].mean()) if bool(mask.any()) else 0.0
        else:  # nothing to learn from this step; entropy is still worth a line on the plot
            with torch.no_grad():
                all_prompts = [r.prompt for r in rollouts for _ in range(cfg.group_size)]
                every = torch.cat([r.completions for r in rollouts]).to(dev)[:, :width]
                every_mask = torch.cat([r.mask for r in rollouts]).to(dev)[:, :width]
                ent = completion_logprobs(self.model, all_prompts, every, pad, entropy=True)[1]
                assert ent is not None
                entropy_mean = float(ent[every_mask].mean()) if bool(every_mask.any()) else 0.0
        return {
            "loss": loss_sum / cfg.ppo_epochs,
            "clip_fraction": clip_sum / cfg.ppo_epochs,
            "ess": ess,
            "kl": kl,
            "ref_kl": kl_sum / cfg.ppo_epochs,
            "entropy": entropy_mean,
            "tokens": float(total_generated),
        }

    def _dpo_update(
        self,
        prompts: list[list[int]],
        completions: torch.Tensor,
        mask: torch.Tensor,
        behaviour: torch.Tensor,
        rewards: torch.Tensor,
    ) -> dict[str, float]:
        cfg = self.config
        assert self.ref_model is not None
        g = cfg.group_size
        pad = self.task.pad_id
        best, worst = rewards.argmax(dim=1), rewards.argmin(dim=1)
        valid = (rewards.max(dim=1).values > rewards.min(dim=1).values).nonzero().flatten()
        m = mask.float()
        with torch.no_grad():
            current, entropy = completion_logprobs(
                self.model, prompts, completions, pad, entropy=True
            )
        assert entropy is not None
        ess, kl = offpolicy_metrics(current, behaviour, mask)
        loss_value = 0.0
        if valid.numel():
            chosen = valid * g + best[valid]
            rejected = valid * g + worst[valid]
            rows = torch.cat([chosen, rejected])
            row_prompts = [prompts[i] for i in rows.tolist()]
            with torch.no_grad():
                ref_logp = completion_logprobs(self.ref_model, row_prompts, completions[rows], pad)
                ref = (ref_logp[0] * m[rows]).sum(-1)
            for _ in range(cfg.ppo_epochs):
                self.optimizer.zero_grad(set_to_none=True)
                logp = completion_logprobs(self.model, row_prompts, completions[rows], pad)[0]
                seq = (logp * m[rows]).sum(-1)
                k = valid.numel()
                loss = dpo_loss(seq[:k], seq[k:], ref[:k], ref[k:], beta=cfg.dpo_beta)
                loss.backward()  # type: ignore[no-untyped-call]
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                loss_value = float(loss.detach())
        return {
            "loss": loss_value,
            "clip_fraction": 0.0,
            "ess": ess,
            "kl": kl,
            "ref_kl": 0.0,
            "entropy": float(entropy[mask].mean()) if bool(mask.any()) else 0.0,
            "tokens": float(mask.sum()),
        }

    def _stats(
        self, rollouts: list[Rollout], metrics: dict[str, float], engine: Engine, start: float
    ) -> StepStats:
        trained_at = self.step - 1
        lags = [trained_at - r.min_version for r in rollouts]
        wall = time.perf_counter() - start
        ws = engine.weight_stats()
        return StepStats(
            step=trained_at,
            version=self.step,
            wall_seconds=wall,
            reward_mean=float(torch.cat([r.rewards for r in rollouts]).mean()),
            lag_min=min(lags),
            lag_mean=sum(lags) / len(lags),
            lag_max=max(lags),
            dropped=self.dropped,
            queue_depth=self._buffer.depth(),
            generator_busy=min(1.0, engine.busy_seconds() / wall) if wall > 0 else 0.0,
            trainer_busy=min(1.0, self._train_seconds / wall) if wall > 0 else 0.0,
            ess=metrics["ess"],
            clip_fraction=metrics["clip_fraction"],
            kl=metrics["kl"],
            loss=metrics["loss"],
            weight_sync_seconds=ws.seconds_per_publish + ws.seconds_per_pull,
            in_flight_weight_updates=engine.in_flight_updates(),
            mixed_version_groups=sum(1 for r in rollouts if r.mixed_versions),
            tokens=int(metrics["tokens"]),
            tickets=tuple(r.ticket for r in rollouts),
            entropy=metrics["entropy"],
            ref_kl=metrics["ref_kl"],
            update_seconds=self._last_update_seconds,
            train_seconds=self._train_seconds,
            generation_seconds=engine.busy_seconds(),
        )

    # -- checkpoints ---------------------------------------------------------------------

    def save_checkpoint(self, path: str | Path) -> None:
        """Save weights, optimizer, policy version and the queue of untrained rollouts.

        Written to a temporary file and renamed, so a crash never leaves half a checkpoint.
        Call it between steps: between :meth:`run` calls, or in the loop over :meth:`run`
        while the generator keeps working (generations still in flight are not saved;
        a resume generates them again, with the checkpoint's weights).
        """
        queue, next_ticket = self._contiguous_queue()
        state: dict[str, Any] = {
            "format": _CHECKPOINT_FORMAT,
            "config": asdict(self.config),
            "step": self.step,
            "dropped": self.dropped,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ref_model": self.ref_model.state_dict() if self.ref_model is not None else None,
            "queue": [rollout_to_dict(r) for r in queue],
            "next_ticket": next_ticket,
        }
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint`; training continues
        at the saved policy version with the saved queue."""
        state = torch.load(Path(path), weights_only=False, map_location="cpu")
        if state.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"unknown checkpoint format {state.get('format')!r} in {path}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ref_model is not None and state["ref_model"] is not None:
            self.ref_model.load_state_dict(state["ref_model"])
        self.step = int(state["step"])
        self.dropped = int(state["dropped"])
        self._buffer.clear()
        self._buffer.put([rollout_from_dict(d) for d in state["queue"]])
        self._admission = self._new_admission(int(state["next_ticket"]))
