"""Adaptive concurrency (AIMD) against a server that publishes no limits.

The simulator's `vllm` profile: 32 generation slots, latency growing with load, no
rate-limit headers. Fixed caps beside the adaptive limiter (ceiling 128), same requests.

    python benchmarks/adaptive.py [--requests 600]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from typing import Any

import surge
import surge.sim
from surge.providers import OpenAIProvider


async def one(requests: int, concurrency: int, adaptive: bool) -> dict[str, Any]:
    async with surge.sim.serve(profile="vllm", seed=2) as server:
        provider = OpenAIProvider(base_url=server.url, api_key=None, max_connections=256)

        async def call(i: int) -> Any:
            body = {
                "model": "sim-small",
                "messages": [{"role": "user", "content": f"q{i}"}],
                "max_tokens": 32,
            }
            return await provider.send("/v1/chat/completions", body)

        limiter = surge.Limiter(concurrency=concurrency, adaptive=adaptive)
        start = time.perf_counter()
        results = await surge.gather(call, range(requests), limiter=limiter)
        wall = time.perf_counter() - start
        await provider.aclose()
        latencies = sorted(r.latency or 0.0 for r in results if r.ok)
        return {
            "name": f"adaptive, ceiling {concurrency}" if adaptive else f"fixed {concurrency}",
            "wall": wall, "ok": sum(r.ok for r in results),
            "p50": statistics.median(latencies), "p90": latencies[int(len(latencies) * 0.9)],
            "cap": limiter.concurrency_limit, "peak": server.stats()["peak_concurrency"],
        }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=600)
    args = parser.parse_args()
    rows = [
        asyncio.run(one(args.requests, c, a))
        for c, a in ((8, False), (32, False), (128, False), (128, True))
    ]
    print(
        f"\nAdaptive concurrency: {args.requests} requests to a vllm-like simulator (32 slots, "
        f"no published limits; Python {platform.python_version()}, {platform.machine()})\n"
    )
    print(
        "| limiter                | ok  | wall s | p50 latency s | p90 latency s | final cap | peak in flight |"
    )
    print(
        "|------------------------|-----|--------|---------------|---------------|-----------|----------------|"
    )
    for r in rows:
        print(
            f"| {r['name']:22} | {r['ok']:3} | {r['wall']:6.1f} | {r['p50']:13.2f} | {r['p90']:13.2f} | {r['cap']:9} | {r['peak']:14} |"
        )
    print(f"\nreproduce: python benchmarks/adaptive.py --requests {args.requests}")


if __name__ == "__main__":
    main()
