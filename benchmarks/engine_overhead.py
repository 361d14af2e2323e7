"""Engine overhead per call against an instant fake call, beside a bare gather + Semaphore.

Every limit is enabled but set so it never binds (concurrency cap, RPM and TPM buckets,
a token estimate per item), so what is measured is the bookkeeping, not waiting.

    python benchmarks/engine_overhead.py [--items 100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import surge


async def instant(x: int) -> int:
    return x


async def bare_gather_semaphore(n: int, cap: int) -> None:
    semaphore = asyncio.Semaphore(cap)

    async def guarded(x: int) -> int:
        async with semaphore:
            return await instant(x)

    await asyncio.gather(*(guarded(i) for i in range(n)))


async def surge_gather(n: int, cap: int) -> None:
    results = await surge.gather(
        instant, range(n), concurrency=cap, rpm=1e12, tpm=1e15, tokens=lambda x: 100
    )
    assert len(results) == n and results[-1].ok


async def surge_as_completed(n: int, cap: int) -> None:
    count = 0
    async for _ in surge.as_completed(
        instant, range(n), concurrency=cap, rpm=1e12, tpm=1e15, tokens=lambda x: 100
    ):
        count += 1
    assert count == n


def measure(fn: Callable[[int, int], Awaitable[None]], n: int, cap: int) -> float:
    gc.collect()
    start = time.perf_counter()
    asyncio.run(fn(n, cap))  # type: ignore[arg-type]
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    contenders = {
        "asyncio.gather + Semaphore (bare)": bare_gather_semaphore,
        "surge.gather (all limits on)": surge_gather,
        "surge.as_completed (all limits on)": surge_as_completed,
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
        for name, fn in contenders.items():
            samples[name].append(measure(fn, args.items, args.concurrency))
    bare = statistics.median(samples["asyncio.gather + Semaphore (bare)"])
    print(
        f"\nEngine overhead: {args.items:,} instant calls, concurrency {args.concurrency}, "
        f"median of {args.repeats} (Python {platform.python_version()}, {platform.machine()})\n"
    )
    print(f"| {'contender':38} | µs/call (median) | min   | max   | vs bare |")
    print(f"|{'-' * 40}|------------------|-------|-------|---------|")
    for name, values in samples.items():
        median = statistics.median(values)
        print(
            f"| {name:38} | {median:16.1f} | {min(values):5.1f} | {max(values):5.1f} | {median / bare:6.2f}x |"
        )
    print(
        f"\nreproduce: python benchmarks/engine_overhead.py --items {args.items} --repeats {args.repeats}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
