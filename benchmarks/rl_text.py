"""Held-out accuracy against wall time on the word-problem task: sync vs async k=1/2/4.

Each seed builds one task (train and held-out word problems), one tokenizer trained on
the task's text, and one small GPT-2 from its config, warmed up on the ``#### n``
format with the question's first number (it reads the question but cannot add). Every
configuration then trains from those same weights on the same two cores:

- sync 1thr / 2thr: generator and trainer take turns in one process, each phase with 1
  or 2 intra-op threads;
- async k: generator process (1 thread) and trainer (1 thread) overlap, lag <= k.

Every ``--eval-every`` steps the run snapshots its weights and its wall time; the
snapshots are evaluated after training (greedy, the whole held-out split), so
evaluation takes no wall time from any run and gives the async generator no free time.
"best sync" is the synchronous setup with the shortest median time to the target over
all seeds, a seed that never reached it counting as infinitely slow; speed-ups are
against it. Spread is min-max across seeds. ``--sampling-seed-offset`` changes only the
RL sampling seed (same task, warm-up and weights): a control for how far another sample
stream alone moves a run.

    python benchmarks/rl_text.py --seeds 0 1 2 3 4 5 6 --json a.json        # BENCHMARKS.md,
    python benchmarks/rl_text.py --seeds 7 8 9 10 11 12 13 --json b.json    # two batches
    python benchmarks/rl_text.py --from-json a.json b.json                  # one table
    python benchmarks/rl_text.py --seeds 0 --steps 20 --eval-every 10       # a quick look
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from surge.rl import RLConfig, evaluate
from surge.rl._train_config import (
    ModelSection,
    TaskSection,
    TokenizerSection,
    TrainConfig,
    WarmupSection,
)
from surge.rl._train_run import _warmup, build_run


@dataclass
class Run:
    name: str
    seed: int
    walls: list[float] = field(default_factory=list)  # at each evaluation point
    steps: list[int] = field(default_factory=list)  # policy version at each evaluation point
    accuracy: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)  # per step, batch mean
    lag_max: int = 0
    ess_min: float = 1.0
    ess: list[float] = field(default_factory=list)  # per step
    seconds_per_step: float = 0.0

    def time_to(self, target: float) -> float | None:
        """Wall seconds to the first evaluation at or above ``target`` after training
        started (the warmed-up start does not count)."""
        for wall, acc in zip(self.walls[1:], self.accuracy[1:], strict=True):
            if acc >= target:
                return wall
        return None

    def steps_to(self, target: float) -> int | None:
        """Optimizer steps to the first evaluation at or above ``target``."""
        for step, acc in zip(self.steps[1:], self.accuracy[1:], strict=True):
            if acc >= target:
                return step
        return None

    def final(self) -> float:
        return self.accuracy[-1]


def configs() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for threads in (1, 2):
        out[f"sync {threads}thr"] = {
            "mode": "sync",
            "engine": "thread",
            "generator_threads": threads,
            "trainer_threads": threads,
        }
    for k in (1, 2, 4):
        out[f"async k={k}"] = {
            "mode": "async",
            "max_staleness": k,
            "engine": "process",
            "generator_threads": 1,
            "trainer_threads": 1,
        }
    return out


def _config(
    args: argparse.Namespace, seed: int, knobs: dict[str, Any], out: Path, *, warmup: bool = False
) -> TrainConfig:
    rl = RLConfig(
        prompts_per_batch=args.prompts,
        group_size=args.group,
        lr=args.lr,
        decoupled=not args.coupled,
        is_cap=args.is_cap,
        seed=seed if warmup else seed + args.sampling_seed_offset,  # the warm-up's too
        **knobs,
    )
    return TrainConfig(
        output=str(out),
        steps=args.steps,
        device="cpu",
        task=TaskSection(
            train_size=args.train_size,
            eval_size=args.eval_size,
            max_operand=args.max_operand,
            kinds=list(args.kinds),
            max_new_tokens=4,
            seed=seed,
        ),
        tokenizer=TokenizerSection(vocab_size=args.vocab),
        model=ModelSection(
            config={"n_embd": args.d_model, "n_layer": args.layers, "n_head": 4, "n_positions": 64},
            seed=seed,
        ),
        warmup=WarmupSection(steps=args.warmup, lr=2e-3, target="first_number"),
        rl=rl,
    )


def run_seed(seed: int, names: list[str], args: argparse.Namespace) -> list[Run]:
    with tempfile.TemporaryDirectory() as tmp:
        base = _config(args, seed, configs()[names[0]], Path(tmp), warmup=True)
        trainer, task, held_out = build_run(base, Path(tmp))
        _warmup(base, trainer, task)
        warm = copy.deepcopy(trainer.model.state_dict())
        assert held_out is not None
        runs = []
        for name in names:
            cfg = _config(args, seed, configs()[name], Path(tmp))
            trainer, task, held_out = build_run(cfg, Path(tmp))
            assert held_out is not None
            trainer.model.load_state_dict(warm)
            trainer.reset_reference()
            run = Run(name, seed)
            snapshots: list[tuple[float, int, dict[str, torch.Tensor]]] = [
                (0.0, 0, copy.deepcopy(warm))
            ]
            for s in trainer.run(args.steps):
                run.rewards.append(s.reward_mean)
                run.lag_max = max(run.lag_max, s.lag_max)
                run.ess_min = min(run.ess_min, s.ess)
                run.ess.append(s.ess)
                if s.version % args.eval_every == 0 or s.version == args.steps:
                    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
                    snapshots.append((s.wall_seconds, s.version, state))
            run.seconds_per_step = snapshots[-1][0] / args.steps
            for wall, step, state in snapshots:  # evaluated after the clock stopped
                trainer.model.load_state_dict(state)
                run.walls.append(wall)
                run.steps.append(step)
                run.accuracy.append(evaluate(trainer.model, held_out)["eval_accuracy"])
            runs.append(run)
            ttt = run.time_to(args.target)
            print(
                f"  seed {seed} {name:10s} {run.walls[-1]:6.1f}s acc {run.accuracy[0]:.3f} -> "
                f"{run.final():.3f} to-target {'-' if ttt is None else f'{ttt:.1f}s'} "
                f"lag<={run.lag_max} ess>={run.ess_min:.3f}",
                file=sys.stderr,
                flush=True,
            )
        return runs


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--target", type=float, default=0.5, help="held-out accuracy to time")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6])
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--train-size", type=int, default=800)
    p.add_argument("--eval-size", type=int, default=200)
    p.add_argument("--max-operand", type=int, default=3)
    p.add_argument("--kinds", nargs="+", default=["add"])
    p.add_argument("--vocab", type=int, default=400)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=16)
    # 3e-4, not 1e-3: at 1e-3 one optimizer step moves this small policy so far that
    # samples one version old keep an ESS of 0.31, and sync runs too collapse early on
    # some seeds; at 3e-4 the ESS stays >= 0.87 at staleness 2. Every setup uses it.
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument(
        "--coupled",
        action="store_true",
        help="PPO ratio against the behaviour policy (decoupled=False) instead of AReaL's",
    )
    p.add_argument("--is-cap", type=float, default=2.0, help="truncation of importance weights")
    p.add_argument(
        "--sampling-seed-offset",
        type=int,
        default=0,
        help="added to the RL sampling seed only (same task, warm-up and weights): a "
        "control for how far a different sample stream alone moves a run",
    )
    p.add_argument("--only", nargs="*", default=None, help="substrings of config names")
    p.add_argument("--json", type=Path, default=None, help="write every run here")
    p.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        help="print the table of runs saved with --json (several files: their seeds together)",
    )
    args = p.parse_args()

    if args.target <= 0:
        p.error("--target must be > 0: the held-out accuracy to time")
    names = [n for n in configs() if not args.only or any(o in n for o in args.only)]
    load_at_start = os.getloadavg()[0]
    runs: dict[str, list[Run]] = {n: [] for n in names}
    if args.from_json:
        for path in args.from_json:
            for name, saved in json.loads(path.read_text()).items():
                runs.setdefault(name, []).extend(Run(**d) for d in saved)
        names = [n for n in runs if runs[n]]
        runs = {n: runs[n] for n in names}
        args.seeds = sorted({r.seed for rs in runs.values() for r in rs})
    for seed in [] if args.from_json else args.seeds:  # configs interleaved per seed
        for run in run_seed(seed, names, args):  # so machine noise hits them alike
            runs[run.name].append(run)

    # Median time to target over every seed, a seed that never reached it counting as
    # infinitely slow (a censored median): defined while more than half the seeds reach
    # the target, and it does not flatter a setup by dropping the seeds it lost.
    medians: dict[str, float | None] = {}
    for name, rs in runs.items():
        all_times = [
            t if t is not None else float("inf") for t in (r.time_to(args.target) for r in rs)
        ]
        median = statistics.median(all_times)
        medians[name] = median if median != float("inf") else None
    syncs = [n for n in names if n.startswith("sync") and medians[n] is not None]
    best = min(syncs, key=lambda n: medians[n] or 0.0) if syncs else None
    print(
        f"| config | s/step | acc at start | final acc | time to {args.target} (reached) | "
        f"steps to {args.target} | reached | median time, never = inf | speed-up vs {best or 'best sync'} | lag max | ESS median | ESS min |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        times = [t for t in (r.time_to(args.target) for r in rs) if t is not None]
        steps = [n for n in (r.steps_to(args.target) for r in rs) if n is not None]
        steps_text = f"{statistics.median(steps):.0f} [{min(steps)}-{max(steps)}]" if steps else "-"
        speedup = "-"
        if best is not None and medians[name] is not None:
            base = medians[best]
            assert base is not None
            speedup = f"{base / medians[name]:.2f}x"  # type: ignore[operator]
        print(
            f"| {name} | {_spread([r.seconds_per_step for r in rs])} | "
            f"{_spread([r.accuracy[0] for r in rs])} | {_spread([r.final() for r in rs])} | "
            f"{_spread(times)} s | {steps_text} | {len(times)}/{len(rs)} | "
            f"{'-' if medians[name] is None else f'{medians[name]:.2f} s'} | {speedup} | "
            f"{max(r.lag_max for r in rs)} | "
            f"{statistics.median(statistics.median(r.ess) for r in rs):.3f} | "
            f"{min(r.ess_min for r in rs):.3f} |"
        )
    print(
        f"\nmedian [min-max] over seeds {args.seeds}; time and steps to target over the "
        f"seeds that reached it ('reached'); speed-up from the medians over all seeds, a "
        f"seed that never reached the target counted as infinitely slow. {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}"
        + (
            "."
            if args.from_json
            else f", load average {load_at_start:.2f} at the start, "
            f"{os.getloadavg()[0]:.2f} at the end (1-minute)."
        )
    )
    print("command: python " + " ".join(sys.argv))
    if args.json is not None:
        args.json.write_text(
            json.dumps({n: [r.__dict__ for r in rs] for n, rs in runs.items()}, indent=1)
        )


if __name__ == "__main__":
    main()
