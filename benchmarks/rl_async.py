"""Async vs sync RL on the demo task, on the same cores.

Trains the tiny transformer on ReverseDigits with GRPO, synchronously and asynchronously
at max_staleness 1, 2 and 4, and reports wall time and steps to a fixed reward and the
final reward at an equal number of steps. Every run gets the same two cores:

- sync 2thr / 1thr: generator and trainer take turns in one process, each phase with 2
  (torch's default) or 1 intra-op threads;
- sync 1+2thr: the same with 1 thread for generation and 2 for training (the fastest
  split of the phases the `--phases` probe can find);
- sync split: generator process (1 thread) and trainer (1 thread) take turns;
- async k: generator process (1 thread) and trainer (1 thread) overlap, lag <= k;
- async k=2 threads: generator thread and trainer thread (1 intra-op thread each) in one
  process, overlapping where torch releases the GIL.

"best sync" is whichever synchronous setup reached the reward fastest (median); speedups
are against it. Wall time starts after the generator process is up (spawn + import
torch, ~2 s, is not training). Reward is the batch mean, smoothed over a 10-step window.

    python benchmarks/rl_async.py --target 0.8 --seeds 0 1 2 3 4   # BENCHMARKS.md
    python benchmarks/rl_async.py --steps 60 --seeds 0              # a quick look
    python benchmarks/rl_async.py --phases                          # the ceiling
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from surge.rl import ReverseDigits, RLConfig, TinyLM, TinyLMConfig, Trainer

WINDOW = 10


@dataclass
class Run:
    name: str
    seed: int
    walls: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    lag_max: int = 0
    gen_busy: float = 0.0
    train_busy: float = 0.0
    ess_min: float = 1.0
    sync_ms: float = 0.0

    def smoothed(self) -> list[float]:
        out = []
        for i in range(len(self.rewards)):
            lo = max(0, i - WINDOW + 1)
            out.append(sum(self.rewards[lo : i + 1]) / (i + 1 - lo))
        return out

    def steps_to(self, target: float) -> int | None:
        for i, r in enumerate(self.smoothed()):
            if i + 1 >= WINDOW and r >= target:
                return i + 1
        return None

    def time_to(self, target: float) -> float | None:
        steps = self.steps_to(target)
        return None if steps is None else self.walls[steps - 1]

    def final(self) -> float:
        return sum(self.rewards[-WINDOW:]) / len(self.rewards[-WINDOW:])


def configs() -> dict[str, dict[str, Any]]:
    def sync(engine: str, gen: int, train: int) -> dict[str, Any]:
        return {
            "mode": "sync",
            "engine": engine,
            "generator_threads": gen,
            "trainer_threads": train,
        }

    def overlap(k: int, engine: str = "process") -> dict[str, Any]:
        return {
            "mode": "async",
            "max_staleness": k,
            "engine": engine,
            "generator_threads": 1,
            "trainer_threads": 1,
        }

    return {
        "sync 2thr": sync("thread", 2, 2),
        "sync 1thr": sync("thread", 1, 1),
        "sync 1+2thr": sync("thread", 1, 2),
        "sync split": sync("process", 1, 1),
        "async k=1": overlap(1),
        "async k=2": overlap(2),
        "async k=4": overlap(4),
        "async k=2 threads": overlap(2, "thread"),
    }


def run_one(name: str, knobs: dict[str, Any], seed: int, args: argparse.Namespace) -> Run:
    task = ReverseDigits(length=args.length, digits=args.digits)
    torch.manual_seed(seed)
    model = TinyLM(
        TinyLMConfig(
            vocab_size=task.vocab_size,
            d_model=args.d_model,
            n_layers=args.layers,
            d_ff=4 * args.d_model,
        )
    )
    cfg = RLConfig(
        seed=seed,
        prompts_per_batch=args.prompts,
        group_size=args.group,
        lr=args.lr,
        **knobs,
    )
    trainer = Trainer(model, task, cfg, cores=2)
    run = Run(name=name, seed=seed)
    for s in trainer.run(args.steps):
        run.walls.append(s.wall_seconds)
        run.rewards.append(s.reward_mean)
        run.lag_max = max(run.lag_max, s.lag_max)
        run.ess_min = min(run.ess_min, s.ess)
        run.gen_busy, run.train_busy = s.generator_busy, s.trainer_busy
        run.sync_ms = s.weight_sync_seconds * 1000
    return run


def _time_phase(
    kind: str, threads: int, args: argparse.Namespace, start: Any, out: Any, repeats: int
) -> None:
    """In its own process: median time of one generation batch or one training step."""
    from surge.rl import Generator

    torch.set_num_threads(threads)
    task = ReverseDigits(length=args.length, digits=args.digits)
    torch.manual_seed(0)
    cfg = TinyLMConfig(
        vocab_size=task.vocab_size,
        d_model=args.d_model,
        n_layers=args.layers,
        d_ff=4 * args.d_model,
    )
    rl = RLConfig(prompts_per_batch=args.prompts, group_size=args.group, lr=args.lr)
    trainer = Trainer(TinyLM(cfg), task, rl, cores=2)
    gen = Generator(TinyLM(cfg), task, group_size=args.group, seed=0, refresh=lambda mv: 0)
    tickets = list(range(args.prompts))
    batch = gen.generate(tickets)
    # A fresh model's rewards vary within every group, so no completion is skipped.
    fn = (lambda: gen.generate(tickets)) if kind == "gen" else (lambda: trainer._update(batch))
    for _ in range(5):
        fn()
    start.wait()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    out.put((kind, statistics.median(times)))


def _phases_at_once(
    jobs: list[tuple[str, int]], args: argparse.Namespace, repeats: int = 100
) -> dict[str, float]:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out: Any = ctx.Queue()
    start = ctx.Barrier(len(jobs))
    procs = [
        ctx.Process(target=_time_phase, args=(kind, threads, args, start, out, repeats))
        for kind, threads in jobs
    ]
    for proc in procs:
        proc.start()
    result = dict(out.get() for _ in procs)
    for proc in procs:
        proc.join()
    return result


def phases(args: argparse.Namespace) -> None:
    """The ceiling on the async speedup for this model and batch, on this machine.

    Times one generation batch and one training step alone at 1 and 2 intra-op threads
    (sync pays their sum), then both at once in two 1-thread processes (async pays the
    larger). Running both at once shows what the machine really gives two processes: on
    a VM whose vCPUs share a busy host each phase slows down, and the ceiling with it.
    """
    alone = {
        (kind, threads): _phases_at_once([(kind, threads)], args)[kind]
        for threads in (1, 2)
        for kind in ("gen", "train")
    }
    both = _phases_at_once([("gen", 1), ("train", 1)], args)
    for (kind, threads), t in alone.items():
        print(f"{kind:5s} alone, {threads} thread(s): {t * 1000:6.1f} ms")
    for kind, t in both.items():
        print(f"{kind:5s} beside the other phase (1 thread each): {t * 1000:6.1f} ms")
    best_sync = min(alone["gen", g] + alone["train", t] for g in (1, 2) for t in (1, 2))
    overlap = max(both.values())
    print(
        f"best sync = {best_sync * 1000:.1f} ms/step; async at best = {overlap * 1000:.1f} "
        f"ms/step; ceiling on the async speedup = {best_sync / overlap:.2f}x "
        f"(load average {os.getloadavg()[0]:.2f})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--target", type=float, default=0.7)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--length", type=int, default=5)
    p.add_argument("--digits", type=int, default=4)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--only", nargs="*", default=None, help="substrings of config names")
    p.add_argument("--plot", type=Path, default=Path("benchmarks/figures/rl_async.png"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--phases", action="store_true", help="time the phases: the ceiling")
    args = p.parse_args()
    if args.phases:
        phases(args)
        return

    cfgs = {n: k for n, k in configs().items() if not args.only or any(o in n for o in args.only)}
    runs: dict[str, list[Run]] = {n: [] for n in cfgs}
    for seed in args.seeds:  # interleave configs so machine noise hits them alike
        for name, knobs in cfgs.items():
            run = run_one(name, knobs, seed, args)
            runs[name].append(run)
            ttt = run.time_to(args.target)
            print(
                f"  seed {seed} {name:18s} {run.walls[-1]:6.1f}s "
                f"to-target {'-' if ttt is None else f'{ttt:.1f}s':>7s} final {run.final():.3f}",
                file=sys.stderr,
                flush=True,
            )

    medians: dict[str, float | None] = {}
    for name, rs in runs.items():
        reached = [t for t in (r.time_to(args.target) for r in rs) if t is not None]
        medians[name] = statistics.median(reached) if len(reached) == len(rs) else None
    syncs = [n for n in cfgs if n.startswith("sync") and medians[n] is not None]
    best = min(syncs, key=lambda n: medians[n] or 0.0) if syncs else None
    header = (
        f"| config | s/step | steps to {args.target} (median) | time to {args.target} "
        f"(median [min-max]) | speedup vs best sync ({best}) | per seed [min-max] | "
        f"vs sync 2thr | final reward @ "
        f"{args.steps} steps (mean ± sd) | max lag | gen busy | train busy | min ESS |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))

    def speedup(name: str, base: str | None) -> str:
        med, bm = medians[name], medians.get(base) if base else None
        return "-" if med is None or bm is None else f"{bm / med:.2f}x"

    def per_seed(name: str, base: str | None) -> str:
        """The speed-up seed by seed (the same seed's best-sync run as the base)."""
        if base is None:
            return "-"
        pairs = zip(runs[base], runs[name], strict=True)
        ratios = [
            b / t
            for b, t in ((b.time_to(args.target), r.time_to(args.target)) for b, r in pairs)
            if b is not None and t is not None
        ]
        return f"{min(ratios):.2f}-{max(ratios):.2f}x" if ratios else "-"

    def spread(name: str) -> str:
        times = [t for t in (r.time_to(args.target) for r in runs[name]) if t is not None]
        return f" [{min(times):.1f}-{max(times):.1f}]" if times else ""

    summary = {}
    for name, rs in runs.items():
        per_step = statistics.mean(r.walls[-1] / len(r.walls) for r in rs)
        finals = [r.final() for r in rs]
        sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
        med = medians[name]
        steps = [r.steps_to(args.target) for r in rs]
        med_steps = statistics.median(s for s in steps if s is not None) if all(steps) else None
        print(
            f"| {name} | {per_step:.3f} | {med_steps or 'not reached'} | "
            f"{'not reached' if med is None else f'{med:.1f}s'}{spread(name)} | "
            f"{speedup(name, best)} | {per_seed(name, best)} | {speedup(name, 'sync 2thr')} | {statistics.mean(finals):.3f} ± {sd:.3f} | "
            f"{max(r.lag_max for r in rs)} | {statistics.mean(r.gen_busy for r in rs):.2f} | "
            f"{statistics.mean(r.train_busy for r in rs):.2f} | {min(r.ess_min for r in rs):.3f} |"
        )
        summary[name] = {
            "seconds_per_step": per_step,
            "time_to_target_median": med,
            "times_to_target": [r.time_to(args.target) for r in rs],
            "steps_to_target": steps,
            "finals": finals,
        }
    cmd = "python benchmarks/rl_async.py " + " ".join(sys.argv[1:])
    load = os.getloadavg()[0]
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load average at the end {load:.2f}"
    )
    print(f"reproduce: {cmd.strip()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"plot": str(args.plot), "json": str(args.json)},
                    "summary": summary,
                    "runs": {n: [r.__dict__ for r in rs] for n, rs in runs.items()},
                },
                indent=1,
            )
        )
    plot(runs, args)


def plot(runs: dict[str, list[Run]], args: argparse.Namespace) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed; skipping the plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = [
        "#000000",
        "#555555",
        "#999999",
        "#cccccc",
        "#1f77b4",
        "#2ca02c",
        "#d62728",
        "#9467bd",
    ]
    for color, (name, rs) in zip(colors, runs.items(), strict=True):
        for i, r in enumerate(rs):
            ax.plot(
                r.walls,
                r.smoothed(),
                color=color,
                alpha=0.85,
                lw=1.4,
                label=name if i == 0 else None,
            )
    ax.axhline(args.target, color="k", ls=":", lw=0.8)
    ax.set_xlabel("wall time (s), 2 CPU cores")
    ax.set_ylabel(f"reward ({WINDOW}-step mean)")
    ax.set_title(
        f"GRPO on ReverseDigits(length={args.length}, digits={args.digits}), "
        f"{len(args.seeds)} seeds"
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
