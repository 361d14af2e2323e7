"""`surge demo`: the articles' comparison of sequential, gather and as_completed, measured.

Seven calls of simulated LLM latency (log-normal around 0.85 s, seeded), run five ways.
Each mode's wall time is printed beside its ideal, computed from the latencies the calls
actually took in that run, so the overhead of the machinery is visible, not assumed.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
from dataclasses import dataclass

import typer
from rich.console import Console
from rich.table import Table

import surge
from surge.cli import app


@dataclass(frozen=True)
class ModeTiming:
    mode: str
    wall: float
    ideal: float
    first_result: float
    ideal_first_result: float

    @property
    def within_target(self) -> bool:
        """The engine benchmark's bar: within 5 % (+50 ms) of the ideal."""
        return self.wall <= self.ideal * 1.05 + 0.05


def simulated_latencies(n: int = 7, *, mean: float = 0.85, seed: int = 7) -> list[float]:
    """Latencies like a short chat completion: log-normal, mean about `mean` seconds."""
    rng = random.Random(seed)
    sigma = 0.15
    mu = math.log(mean) - sigma**2 / 2
    return [rng.lognormvariate(mu, sigma) for _ in range(n)]


def ideal_makespan(latencies: list[float], cap: int | None) -> tuple[float, float]:
    """(finish time, first finish) when calls start in order on `cap` free slots."""
    if cap is None or cap >= len(latencies):
        return max(latencies), min(latencies)
    slots = [0.0] * cap
    finishes = []
    for latency in latencies:
        start = heapq.heappop(slots)
        finishes.append(start + latency)
        heapq.heappush(slots, start + latency)
    return max(finishes), min(finishes)


async def run_mode(mode: str, latencies: list[float]) -> ModeTiming:
    loop = asyncio.get_running_loop()

    async def llm_call(i: int) -> int:
        await asyncio.sleep(latencies[i])
        return i

    cap = {"sequential": 1, "gather, capped at 2": 2, "as_completed, capped at 2": 2}.get(mode)
    start = loop.time()
    if mode.startswith("as_completed"):
        actual: list[float] = [0.0] * len(latencies)
        first: float | None = None
        async for result in surge.as_completed(llm_call, range(len(latencies)), concurrency=cap):
            first = loop.time() - start if first is None else first
            actual[result.index] = result.latency or 0.0
    else:
        results = await surge.gather(llm_call, range(len(latencies)), concurrency=cap)
        first = loop.time() - start  # gather hands back everything at once
        actual = [r.latency or 0.0 for r in results]
    wall = loop.time() - start
    ideal, ideal_first = ideal_makespan(actual, cap)
    if not mode.startswith("as_completed"):
        ideal_first = ideal
    return ModeTiming(mode, wall, ideal, first if first is not None else wall, ideal_first)


MODES = ("sequential", "gather", "gather, capped at 2", "as_completed", "as_completed, capped at 2")


async def seven_call_comparison(latencies: list[float] | None = None) -> list[ModeTiming]:
    latencies = latencies or simulated_latencies()
    return [await run_mode(mode, latencies) for mode in MODES]


def render(timings: list[ModeTiming], console: Console) -> None:
    table = Table(title="7 simulated LLM calls (~0.85 s each)")
    table.add_column("mode", no_wrap=True)
    for column in ("wall s", "ideal s", "1st result s", "ideal 1st s", "on target"):
        table.add_column(column, justify="right")
    for t in timings:
        table.add_row(
            t.mode, f"{t.wall:.3f}", f"{t.ideal:.3f}", f"{t.first_result:.3f}",
            f"{t.ideal_first_result:.3f}", "yes" if t.within_target else "NO",
        )  # fmt: skip
    console.print(table)
    console.print("ideal: from the calls' own latencies; on target: wall <= ideal x 1.05 + 50 ms")


@app.command()
def demo(
    seed: int = typer.Option(7, help="Seed for the simulated latencies."),
    mean_latency: float = typer.Option(0.85, help="Mean simulated latency per call, seconds."),
) -> None:
    """Show the speed-up: the same seven calls, sequential, gathered, capped, streamed."""
    console = Console()
    latencies = simulated_latencies(seed=seed, mean=mean_latency)
    timings = asyncio.run(seven_call_comparison(latencies))
    render(timings, console)
    sequential, gathered = timings[0], timings[1]
    console.print(
        f"gather is {sequential.wall / gathered.wall:.1f}x faster than sequential; "
        f"as_completed hands over its first result after {timings[3].first_result:.2f} s."
    )
