"""Peak memory streaming many items through `as_completed`: flat in the number of items.

Each size runs in a fresh subprocess, so peak RSS belongs to that size alone. Items come
from a generator (never a list), and each call yields to the loop once, like a real I/O
call.

    python benchmarks/memory_stream.py [--sizes 10000 1000000] [--concurrency 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import subprocess
import sys
import time


async def call(x: int) -> int:
    await asyncio.sleep(0)
    return x


async def stream(n: int, concurrency: int) -> int:
    import surge

    done = 0
    async for result in surge.as_completed(
        call,
        (i for i in range(n)),
        concurrency=concurrency,
        rpm=1e12,
        tpm=1e15,
        tokens=lambda x: 10,
    ):
        done += result.ok
    return done


def child(n: int, concurrency: int) -> None:
    import surge  # noqa: F401 - import cost belongs to the baseline

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    done = asyncio.run(stream(n, concurrency))
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"n": n, "done": done, "baseline_kb": baseline, "peak_kb": peak, "seconds": elapsed}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.concurrency)
        return
    rows = []
    for n in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(n), "--concurrency", str(args.concurrency)],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout))
    smallest = rows[0]["peak_kb"]
    print(
        f"\nMemory, as_completed over a generator at concurrency {args.concurrency} "
        f"(Python {platform.python_version()}, {platform.machine()})\n"
    )
    print("| items     | done      | peak RSS (MB) | over smallest (MB) | seconds | µs/item |")
    print("|-----------|-----------|---------------|--------------------|---------|---------|")
    for row in rows:
        print(
            f"| {row['n']:9,} | {row['done']:9,} | {row['peak_kb'] / 1024:13.1f} | "
            f"{(row['peak_kb'] - smallest) / 1024:18.1f} | {row['seconds']:7.1f} | "
            f"{row['seconds'] / row['n'] * 1e6:7.1f} |"
        )
    sizes = " ".join(str(n) for n in args.sizes)
    print(
        f"\nreproduce: python benchmarks/memory_stream.py --sizes {sizes} --concurrency {args.concurrency}"
    )


if __name__ == "__main__":
    main()
