"""The articles' 7-call comparison, repeated: each mode's wall time against its ideal.

Seven chat calls over HTTP to the simulator's `typical` profile (~0.85 s each). The
ideal comes from the latencies the calls actually took in that run (sequential: their
sum; gather: their max; capped at 2: calls started in order on two slots).

    python benchmarks/seven_calls.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics

import surge.sim
from surge.cli._demo import MODES, ModeTiming, chat_call, seven_call_comparison
from surge.providers import OpenAIProvider


async def one_round(seed: int) -> list[ModeTiming]:
    async with surge.sim.serve(profile="typical", seed=seed) as server:
        provider = OpenAIProvider(base_url=server.url, api_key=None)
        try:
            return await seven_call_comparison(chat_call(provider, f"round {seed}"))
        finally:
            await provider.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    by_mode: dict[str, list[tuple[float, float, float]]] = {m: [] for m in MODES}
    for seed in range(args.repeats):
        for t in asyncio.run(one_round(seed)):
            by_mode[t.mode].append((t.wall, t.ideal, t.first_result))
    print(
        f"\n7 chat calls to the simulator (~0.85 s), {args.repeats} runs with different seeds "
        f"(Python {platform.python_version()}, {platform.machine()})\n"
    )
    print(
        "| mode                      | wall s (median) | ideal s (median) | worst excess over ideal | 1st result s | all within 5 % + 50 ms |"
    )
    print(
        "|---------------------------|-----------------|------------------|-------------------------|--------------|------------------------|"
    )
    for mode, rows in by_mode.items():
        excess = max(wall - ideal for wall, ideal, _ in rows)
        ok = all(wall <= ideal * 1.05 + 0.05 for wall, ideal, _ in rows)
        print(
            f"| {mode:25} | {statistics.median(r[0] for r in rows):15.3f} | "
            f"{statistics.median(r[1] for r in rows):16.3f} | {excess * 1000:20.1f} ms | "
            f"{statistics.median(r[2] for r in rows):12.3f} | {'yes' if ok else 'NO':22} |"
        )
    print(f"\nreproduce: python benchmarks/seven_calls.py --repeats {args.repeats}")


if __name__ == "__main__":
    main()
