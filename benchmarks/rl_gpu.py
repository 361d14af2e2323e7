"""Device check for surge.rl on a GPU: one prepared script, under 8 minutes.

Reports, on whatever CUDA device it finds:

1. trainer and generator on the GPU (thread engine, one device): steps/s synchronous vs
   asynchronous (max_staleness 2) on the demo task, a 4-layer TinyLM, and the reward
   reached;
2. weight sync of a ~100M-parameter bf16 policy: one publish (pack into per-dtype
   buckets on the GPU), one pull (load into the generator's copy), and packing into
   host buffers (what the gloo path costs the trainer) — medians of 10;
3. with two or more GPUs: the same policy sent from cuda:0 to a generator process on
   cuda:1 over NCCL (``DistributedWeightSync``), median of 10;
4. peak GPU memory of each part.

Without CUDA it prints why and exits 0, so it can sit in any script.

    python benchmarks/rl_gpu.py                  # everything (~2-5 min on one H100/H200)
    python benchmarks/rl_gpu.py --steps 40       # a quicker look
    python benchmarks/rl_gpu.py --json out.json  # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

COMMAND = "python benchmarks/rl_gpu.py"


DEVICE = "cuda"  # --device cpu runs the same code on the CPU (a dry run of the script)
SMALL = False  # --small: tiny shapes, for the dry run


def _sync_cuda() -> None:
    if DEVICE != "cpu":
        torch.cuda.synchronize()


def _reset_peak() -> None:
    if DEVICE != "cpu":
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE != "cpu" else 0.0


def _median_ms(fn: Any, repeats: int = 10) -> tuple[float, float, float]:
    """Median, min and max of ``fn()`` in milliseconds (after one warm-up call)."""
    fn()
    _sync_cuda()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync_cuda()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times), max(times)


def _training(steps: int, seed: int) -> list[dict[str, Any]]:
    from surge.rl import ReverseDigits, RLConfig, TinyLM, TinyLMConfig, Trainer

    rows = []
    for mode in ("sync", "async"):
        task = ReverseDigits(length=5, digits=4)
        torch.manual_seed(seed)
        width = 32 if SMALL else 256
        model = TinyLM(
            TinyLMConfig(vocab_size=task.vocab_size, d_model=width, n_layers=4, d_ff=4 * width)
        )
        knobs: dict[str, Any] = {"mode": mode, "seed": seed, "prompts_per_batch": 16}
        if mode == "async":
            knobs["max_staleness"] = 2
        _reset_peak()
        trainer = Trainer(model, task, RLConfig(**knobs), device=DEVICE, generator_device=DEVICE)
        history = trainer.train(steps)
        wall = history[-1].wall_seconds
        rows.append(
            {
                "run": mode if mode == "sync" else "async k=2",
                "steps": steps,
                "wall_s": wall,
                "steps_per_s": steps / wall,
                "reward_end": sum(s.reward_mean for s in history[-10:]) / min(10, len(history)),
                "lag_max": max(s.lag_max for s in history),
                "sync_ms": history[-1].weight_sync_seconds * 1000,
                "peak_gib": _peak_gib(),
            }
        )
    return rows


def _policy_100m() -> torch.nn.Module:
    from surge.rl import TinyLM, TinyLMConfig

    if SMALL:
        cfg = TinyLMConfig(vocab_size=320, max_len=64, d_model=64, n_layers=2, n_heads=4, d_ff=256)
    else:  # ~106M parameters
        cfg = TinyLMConfig(
            vocab_size=32000, max_len=64, d_model=768, n_layers=8, n_heads=12, d_ff=3072
        )
    return TinyLM(cfg).to(device=DEVICE, dtype=torch.bfloat16)


def _weight_sync() -> list[dict[str, Any]]:
    import copy

    from surge.rl import InProcessWeightSync, WeightLayout

    _reset_peak()
    trainer_model = _policy_100m()
    generator_model = copy.deepcopy(trainer_model)
    params = sum(p.numel() for p in trainer_model.parameters())
    state = trainer_model.state_dict()
    layout = WeightLayout.of(state)
    sync = InProcessWeightSync()
    version = [0]

    def publish() -> None:
        version[0] += 1
        sync.publish(state, version[0])

    def pull() -> None:
        publish()
        sync.pull(generator_model, have=version[0] - 1)

    pin = DEVICE != "cpu"
    host = [torch.empty(b.numel, dtype=b.dtype, pin_memory=pin) for b in layout.buckets]

    def to_host() -> None:
        layout.pack(state, out=host)

    rows = []
    for what, fn in (
        ("publish (pack on GPU)", publish),
        ("publish + pull (same GPU)", pull),
        ("pack to pinned host (gloo path)", to_host),
    ):
        med, lo, hi = _median_ms(fn)
        rows.append({"what": what, "median_ms": med, "min_ms": lo, "max_ms": hi})
    for row in rows:
        row.update(
            params_m=params / 1e6,
            wire_mb=layout.nbytes / 1e6,
            buckets=len(layout.buckets),
            peak_gib=_peak_gib(),
        )
    return rows


def _nccl_worker(rank: int, port: int, repeats: int) -> None:
    import torch.distributed as dist

    from surge.rl import DistributedWeightSync, WeightLayout

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model = _policy_100m()
    layout = WeightLayout.of(model.state_dict())
    sync = DistributedWeightSync(layout, peer=1 - rank, device=f"cuda:{rank}")
    for i in range(repeats + 1):
        dist.barrier()
        if rank == 0:
            start = time.perf_counter()
            sync.send(model.state_dict())
            sync.wait_sent()
        else:
            sync.receive(i)
            sync.load_into(model)
        torch.cuda.synchronize()
        dist.barrier()
        if rank == 0 and i > 0:
            elapsed = (time.perf_counter() - start) * 1000
            print(f"NCCL_MS {elapsed:.3f}", flush=True)
    dist.destroy_process_group()


def _nccl(repeats: int = 10) -> list[dict[str, Any]]:
    """cuda:0 -> cuda:1 over NCCL in two processes; parses the sender's timings."""
    import subprocess

    from surge.rl._engines import _free_port

    port = _free_port()
    here = str(Path(__file__).parent)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {here!r}); import rl_gpu; "
                f"rl_gpu._nccl_worker({rank}, {port}, {repeats})",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    out = [p.communicate(timeout=300)[0] for p in procs]
    times = [float(line.split()[1]) for line in out[0].splitlines() if line.startswith("NCCL_MS")]
    if not times or any(p.returncode for p in procs):
        return [{"what": "NCCL cuda:0 -> cuda:1", "error": "worker failed (see stderr)"}]
    return [
        {
            "what": "NCCL cuda:0 -> cuda:1 (send + load)",
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "max_ms": max(times),
        }
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write figures here")
    parser.add_argument(
        "--device", default="cuda", help="cpu: run the same code on the CPU (a dry run)"
    )
    parser.add_argument("--small", action="store_true", help="tiny shapes (for the dry run)")
    args = parser.parse_args()
    global DEVICE, SMALL
    DEVICE, SMALL = args.device, args.small
    if DEVICE != "cpu" and not torch.cuda.is_available():
        print(
            "rl_gpu: no CUDA device visible (torch.cuda.is_available() is False); nothing "
            f"to measure, skipping. Run `{COMMAND}` on a machine with a GPU."
        )
        return 0
    started = time.perf_counter()
    name = torch.cuda.get_device_name(0) if DEVICE != "cpu" else "cpu (dry run)"
    count = torch.cuda.device_count() if DEVICE != "cpu" else 0
    print(f"device: {name} x{count}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    if DEVICE == "cpu":
        print("dry run on the CPU: the figures say nothing about a GPU")
    results: dict[str, Any] = {"device": name, "gpus": count, "torch": torch.__version__}

    results["training"] = _training(args.steps, args.seed)
    print(f"\n1. trainer + generator on {DEVICE} (thread engine), demo task, 4-layer TinyLM")
    print(
        f"{'run':<10} {'steps/s':>8} {'wall':>8} {'r@end':>6} {'lag':>4} {'sync ms':>8} {'peak':>8}"
    )
    for r in results["training"]:
        print(
            f"{r['run']:<10} {r['steps_per_s']:>8.2f} {r['wall_s']:>7.1f}s {r['reward_end']:>6.3f} "
            f"{r['lag_max']:>4} {r['sync_ms']:>8.2f} {r['peak_gib']:>6.2f}GiB"
        )
    sync_s, async_s = (r["steps_per_s"] for r in results["training"])
    print(f"async/sync steps/s: {async_s / sync_s:.2f}x")

    results["weight_sync"] = _weight_sync()
    w = results["weight_sync"][0]
    print(
        f"\n2. weight sync, {w['params_m']:.0f}M-parameter bf16 TinyLM "
        f"({w['wire_mb']:.0f} MB on the wire, {w['buckets']} bucket(s)); median of 10"
    )
    for r in results["weight_sync"]:
        print(
            f"{r['what']:<34} {r['median_ms']:>8.2f} ms  (min {r['min_ms']:.2f}, "
            f"max {r['max_ms']:.2f})  peak {r['peak_gib']:.2f}GiB"
        )
    if DEVICE != "cpu" and count >= 2:
        results["nccl"] = _nccl()
        print("\n3. two GPUs, generator process on cuda:1")
        for r in results["nccl"]:
            if "error" in r:
                print(f"{r['what']}: {r['error']}")
            else:
                print(
                    f"{r['what']:<34} {r['median_ms']:>8.2f} ms  (min {r['min_ms']:.2f}, max {r['max_ms']:.2f})"
                )
    else:
        print("\n3. fewer than two GPUs: the NCCL cuda:0 -> cuda:1 measurement skipped.")
    results["seconds"] = time.perf_counter() - started
    print(f"\ntook {results['seconds']:.0f}s. Reproduce: {COMMAND} --steps {args.steps}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
