"""The official openai SDK at its defaults under surge: what the server sees.

The README's pattern: an `openai.AsyncOpenAI` client, a call that returns the parsed
`ChatCompletion`, `surge.gather(call, items, concurrency=50)` with no `rpm=`, against a
server that allows 300 requests per minute (a burst of 10 s of rate: 50 at once). Each
setup gets its own simulator (profile `openai-tier1` at the given RPM: ~0.85 s calls);
they run side by side in one process. What counts is what the server saw: requests per
item (1.00 is every item sent once) and the share of them refused with 429.

Setups:
- `sdk defaults`: `openai.AsyncOpenAI()` as it comes (max_retries=2), not wired;
- `max_retries=0`: the SDK's retries off, still not wired (no headers reach surge);
- `surge.wire`: `surge.wire(openai.AsyncOpenAI())`, the README's recommended pattern.

    python benchmarks/sdk_defaults.py [--requests 600] [--rpm 300] [--concurrency 50]

600 requests at 300 RPM take about two minutes (the server admits 50, then 5 a second);
`--requests 120 --rpm 600` is a quick look.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sys
from collections.abc import Callable
from typing import Any

import openai

import surge
import surge.sim

SETUPS: dict[str, Callable[[str], Any]] = {
    "sdk defaults (max_retries=2)": lambda url: openai.AsyncOpenAI(base_url=url, api_key="k"),
    "max_retries=0, not wired": lambda url: openai.AsyncOpenAI(
        base_url=url, api_key="k", max_retries=0
    ),
    "surge.wire(client)": lambda url: surge.wire(openai.AsyncOpenAI(base_url=url, api_key="k")),
}


async def one_setup(
    name: str, args: argparse.Namespace
) -> tuple[str, surge.Results[Any], float, dict[str, Any]]:
    async with surge.sim.serve(profile="openai-tier1", rpm=args.rpm, seed=1) as server:
        client = SETUPS[name](server.url)

        async def summarize(i: int) -> Any:
            return await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Summarize item {i} in one line."}],
                max_tokens=50,
            )

        loop = asyncio.get_running_loop()
        start = loop.time()
        results = await surge.gather(summarize, range(args.requests), concurrency=args.concurrency)
        wall = loop.time() - start
        await client.close()
        return name, results, wall, server.stats()


async def main_async(args: argparse.Namespace) -> None:
    burst = args.rpm / 60 * 10
    physical = max(0.0, (args.requests - burst) / (args.rpm / 60))
    print(
        f"{args.requests} requests, server limit {args.rpm:.0f} RPM (burst {burst:.0f}), "
        f"concurrency={args.concurrency}, no rpm= given; openai {openai.__version__}, "
        f"Python {platform.python_version()} ({platform.machine()})"
    )
    print(f"physical limit: (N - burst) / rate = {physical:.0f} s to admit the last request\n")
    outcomes = await asyncio.gather(*(one_setup(name, args) for name in SETUPS))
    header = f"{'setup':<30} {'ok':>5} {'server requests':>16} {'per item':>9} {'429s':>6} {'429 share':>10} {'wall s':>7}"
    print(header)
    print("-" * len(header))
    for name, results, wall, stats in outcomes:
        ok = sum(r.ok for r in results)
        requests = stats["requests"]
        refused = stats["by_status"].get("429", 0)
        print(
            f"{name:<30} {ok:>5} {requests:>16} {requests / args.requests:>9.3f} "
            f"{refused:>6} {refused / max(1, requests):>10.1%} {wall:>7.1f}"
        )
    print(f"\ncommand: python benchmarks/sdk_defaults.py {' '.join(sys.argv[1:])}".rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--rpm", type=float, default=300)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the unwired setups' SDK-retry warnings
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
