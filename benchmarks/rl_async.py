"""Async vs sync RL on the demo task, on the same cores.

Trains the tiny transformer on ReverseDigits with GRPO, synchronously and asynchronously
at max_staleness 1, 2 and 4, and reports wall time to a fixed reward and the final reward
at an equal number of steps. Every run uses the same two cores:

- sync, colocated: generator and trainer take turns, each phase with 2 (or 1) intra-op
  threads — 1 can win on a busy machine, where a descheduled OpenMP worker stalls every op;
- sync, split: generator process (1 thread) and trainer (1 thread) take turns;
- async k: generator process (1 thread) and trainer (1 thread) overlap, lag <= k;
- async k=2 in one process: generator thread and trainer thread (1 intra-op thread
  each) overlap only where torch releases the GIL.

Wall time starts after the generator process is up (spawn + import torch, ~2 s, is not
training). Reward is the batch mean, smoothed over a 10-step window.

    python benchmarks/rl_async.py                      # the BENCHMARKS.md figures
    python benchmarks/rl_async.py --steps 60 --seeds 0 # a quick look
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

    def time_to(self, target: float) -> float | None:
        for i, r in enumerate(self.smoothed()):
            if i + 1 >= WINDOW and r >= target:
                return self.walls[i]
        return None

    def final(self) -> float:
        return sum(self.rewards[-WINDOW:]) / len(self.rewards[-WINDOW:])


def _short(name: str) -> str:
    """'sync, colocated (2 threads/phase)' -> 'sync 2thr'; 'sync, split (...)' -> 'sync split'."""
    if "split" in name:
        return "sync split"
    return "sync " + name.split("(")[1].split(" ")[0] + "thr"


def configs() -> dict[str, dict[str, Any]]:
    return {
        "sync, colocated (2 threads/phase)": {
            "mode": "sync",
            "engine": "thread",
            "generator_threads": 2,
            "trainer_threads": 2,
        },
        "sync, colocated (1 thread/phase)": {
            "mode": "sync",
            "engine": "thread",
            "generator_threads": 1,
            "trainer_threads": 1,
        },
        "sync, split (1+1 procs)": {
            "mode": "sync",
            "engine": "process",
            "generator_threads": 1,
            "trainer_threads": 1,
        },
        **{
            f"async k={k} (1+1 procs)": {
                "mode": "async",
                "max_staleness": k,
                "engine": "process",
                "generator_threads": 1,
                "trainer_threads": 1,
            }
            for k in (1, 2, 4)
        },
        "async k=2 (1+1 threads, 1 proc)": {
            "mode": "async",
            "max_staleness": 2,
            "engine": "thread",
            "generator_threads": 1,
            "trainer_threads": 1,
        },
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


def phases(args: argparse.Namespace) -> None:
    """Time one generation batch and one training step at 1 and 2 intra-op threads.

    Sync on 2 cores costs gen(2) + train(2); async at best max(gen(1), train(1)). Their
    ratio is the ceiling on the async speedup for this model and batch on this machine.
    """
    from surge.rl import Generator
    from surge.rl._rollout import Rollout

    task = ReverseDigits(length=args.length, digits=args.digits)
    torch.manual_seed(0)
    cfg = TinyLMConfig(
        vocab_size=task.vocab_size,
        d_model=args.d_model,
        n_layers=args.layers,
        d_ff=4 * args.d_model,
    )
    model = TinyLM(cfg)
    rl = RLConfig(prompts_per_batch=args.prompts, group_size=args.group, lr=args.lr)
    trainer = Trainer(model, task, rl, cores=2)
    gen = Generator(TinyLM(cfg), task, group_size=args.group, seed=0, refresh=lambda mv: 0)
    tickets = list(range(args.prompts))
    batch: list[Rollout] = gen.generate(tickets)
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, fn in (
            ("gen", lambda: gen.generate(tickets)),
            ("train", lambda: trainer._update(batch)),
        ):
            fn()
            times = []
            for _ in range(15):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out[name, threads] = statistics.median(times)
            print(f"{name:5s} threads={threads}: {out[name, threads] * 1000:6.1f} ms")
    sync = out["gen", 2] + out["train", 2]
    best = max(out["gen", 1], out["train", 1])
    print(
        f"sync gen(2)+train(2) = {sync * 1000:.1f} ms; async max(gen(1), train(1)) = "
        f"{best * 1000:.1f} ms; ceiling on async speedup = {sync / best:.2f}x"
    )


def _matmul_loop(out: Any) -> None:
    torch.set_num_threads(1)
    a, b = torch.randn(128, 128), torch.randn(128, 128)
    start = time.perf_counter()
    for _ in range(4000):
        a @ b
    out.put(time.perf_counter() - start)


def scaling() -> None:
    """How much compute two single-threaded torch processes get at once on this machine.

    Overlap can only pay off as far as the machine runs two such processes in parallel;
    on a VM whose two vCPUs share a busy host this can be far below 2x.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for k in (1, 2):
        q: Any = ctx.Queue()
        procs = [ctx.Process(target=_matmul_loop, args=(q,)) for _ in range(k)]
        for proc in procs:
            proc.start()
        times = [q.get() for _ in procs]
        for proc in procs:
            proc.join()
        if k == 1:
            alone = times[0]
        else:
            print(
                f"matmul loop: alone {alone:.2f}s, two at once {max(times):.2f}s -> "
                f"aggregate throughput {2 * alone / max(times):.2f}x of one process"
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
    p.add_argument("--phases", action="store_true", help="time gen/train at 1 and 2 threads")
    p.add_argument("--scaling", action="store_true", help="parallel throughput of 2 procs")
    args = p.parse_args()
    if args.phases:
        phases(args)
        return
    if args.scaling:
        scaling()
        return

    cfgs = {n: k for n, k in configs().items() if not args.only or any(o in n for o in args.only)}
    runs: dict[str, list[Run]] = {n: [] for n in cfgs}
    for seed in args.seeds:  # interleave configs so machine noise hits them alike
        for name, knobs in cfgs.items():
            run = run_one(name, knobs, seed, args)
            runs[name].append(run)
            ttt = run.time_to(args.target)
            print(
                f"  seed {seed} {name:36s} {run.walls[-1]:6.1f}s "
                f"to-target {'-' if ttt is None else f'{ttt:.1f}s':>7s} final {run.final():.3f}",
                file=sys.stderr,
                flush=True,
            )

    base_names = [n for n in cfgs if n.startswith("sync")]
    header = (
        f"| config | s/step | time to reward {args.target} (median) | speedup vs "
        + " / ".join(_short(n) for n in base_names)
        + f" | final reward @ {args.steps} steps (mean ± sd) | max lag | gen busy | train busy | min ESS |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    medians: dict[str, float | None] = {}
    for name, rs in runs.items():
        times = [r.time_to(args.target) for r in rs]
        reached = [t for t in times if t is not None]
        medians[name] = statistics.median(reached) if len(reached) == len(rs) else None
    summary = {}
    for name, rs in runs.items():
        per_step = statistics.mean(r.walls[-1] / len(r.walls) for r in rs)
        finals = [r.final() for r in rs]
        sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
        med = medians[name]
        speedups = []
        for b in base_names:
            bm = medians[b]
            speedups.append("-" if med is None or bm is None else f"{bm / med:.2f}x")
        print(
            f"| {name} | {per_step:.3f} | {'not reached' if med is None else f'{med:.1f}s'} | "
            f"{' / '.join(speedups)} | {statistics.mean(finals):.3f} ± {sd:.3f} | "
            f"{max(r.lag_max for r in rs)} | {statistics.mean(r.gen_busy for r in rs):.2f} | "
            f"{statistics.mean(r.train_busy for r in rs):.2f} | {min(r.ess_min for r in rs):.3f} |"
        )
        summary[name] = {
            "seconds_per_step": per_step,
            "time_to_target_median": med,
            "times_to_target": [r.time_to(args.target) for r in rs],
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
    colors = ["#000000", "#777777", "#bbbbbb", "#1f77b4", "#2ca02c", "#d62728", "#9467bd"]
    for color, (name, rs) in zip(colors, runs.items(), strict=False):
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
