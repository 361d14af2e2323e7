"""`surge demo`: what surge does and how much it saves, on the built-in simulator.

1. The articles' comparison: 7 chat calls (~0.85 s each) sequential, gathered, capped at
   2, streamed with as_completed, each beside its ideal computed from the latencies the
   calls actually took, so the machinery's overhead is visible, not assumed.
2. 1,000 calls at concurrency 50, against the sequential time those same calls took.
3. A 300-request batch job through `surge run`'s machinery, under a rate limit with
   faults on, with the live progress bar; then the HTML report.
No key and no network: the simulator runs in-process on loopback.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

import surge
import surge.sim
from surge.cli import app
from surge.providers import OpenAIProvider

Call = Callable[[int], Awaitable[Any]]


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


def sleeping_call(latencies: list[float]) -> Call:
    """A fake call that takes latencies[i] seconds: for tests on virtual time."""

    async def call(i: int) -> int:
        await asyncio.sleep(latencies[i])
        return i

    return call


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


MODES = ("sequential", "gather", "gather, capped at 2", "as_completed", "as_completed, capped at 2")
_CAPS = {"sequential": 1, "gather, capped at 2": 2, "as_completed, capped at 2": 2}


async def run_mode(mode: str, call: Call, n: int = 7) -> ModeTiming:
    loop = asyncio.get_running_loop()
    cap = _CAPS.get(mode)
    start = loop.time()
    first: float | None = None
    if mode.startswith("as_completed"):
        actual = [0.0] * n
        async for result in surge.as_completed(call, range(n), concurrency=cap, max_retries=0):
            first = loop.time() - start if first is None else first
            actual[result.index] = result.latency or 0.0
    else:
        results = await surge.gather(call, range(n), concurrency=cap, max_retries=0)
        actual = [r.latency or 0.0 for r in results]
    wall = loop.time() - start
    ideal, ideal_first = ideal_makespan(actual, cap)
    if first is None:  # gather hands back everything at once
        first, ideal_first = wall, ideal
    return ModeTiming(mode, wall, ideal, first, ideal_first)


async def seven_call_comparison(call: Call | list[float] | None = None) -> list[ModeTiming]:
    """Run the five modes one after another on the same 7 calls."""
    if call is None or isinstance(call, list):
        call = sleeping_call(call or simulated_latencies())
    return [await run_mode(mode, call) for mode in MODES]


def render(timings: list[ModeTiming], console: Console) -> None:
    table = Table(title="1. Seven chat calls (~0.85 s each) against the simulator")
    table.add_column("mode", no_wrap=True)
    for column in ("wall s", "ideal s", "1st result s", "ideal 1st s", "on target"):
        table.add_column(column, justify="right")
    for t in timings:
        table.add_row(
            t.mode, f"{t.wall:.3f}", f"{t.ideal:.3f}", f"{t.first_result:.3f}",
            f"{t.ideal_first_result:.3f}", "yes" if t.within_target else "NO",
        )  # fmt: skip
    console.print(table)
    console.print(
        "ideal: from the calls' own latencies; on target: wall ≤ ideal × 1.05 + 50 ms. "
        f"gather is {timings[0].wall / timings[1].wall:.1f}x faster than sequential; "
        f"as_completed hands over its first result after {timings[3].first_result:.2f} s."
    )


def chat_call(provider: OpenAIProvider, tag: str) -> Call:
    async def call(i: int) -> Any:
        body = {
            "model": "sim-small",
            "messages": [{"role": "user", "content": f"{tag} question {i}: say something short."}],
            "max_tokens": 32,
        }
        return await provider.send("/v1/chat/completions", body)

    return call


async def many_calls(call: Call, n: int, concurrency: int, console: Console) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    results = await surge.gather(call, range(n), concurrency=concurrency)
    wall = loop.time() - start
    sequential = sum(r.latency or 0.0 for r in results)
    ok = sum(r.ok for r in results)
    console.print(
        f"\n[bold]2. {n:,} calls at concurrency {concurrency}[/]: {wall:.1f} s "
        f"({ok:,} ok). One after another, the same calls would have taken {sequential:,.0f} s: "
        f"[bold green]{sequential / wall:.0f}x[/] faster."
    )


def prepare_batch(out_dir: Path, n: int) -> tuple[Path, Path]:
    """Write the demo's input file and clear the previous run's outputs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / "demo-input.jsonl"
    with source.open("w") as handle:
        for i in range(n):
            body = {
                "model": "sim-small",
                "messages": [{"role": "user", "content": f"Demo item {i}: one line about rivers."}],
                "max_tokens": 48,
            }
            line = {
                "custom_id": f"demo-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
            handle.write(json.dumps(line) + "\n")
    output = out_dir / "demo-output.jsonl"
    for stale in (output, Path(f"{output}.journal"), Path(f"{output}.errors.jsonl")):
        stale.unlink(missing_ok=True)
    return source, output


async def batch_job(out_dir: Path, n: int, console: Console, *, fast: bool) -> Path:
    from surge.jobs import JobSettings, run_job
    from surge.jobs.progress import ProgressDisplay

    source, output = prepare_batch(out_dir, n)
    rpm = 6000 if fast else 1200
    faults = surge.sim.Faults.uniform_5xx(0.04, reset=0.01, malformed=0.01)
    console.print(
        f"\n[bold]3. A {n}-request batch job[/] (surge run) against a simulator limited to "
        f"{rpm} RPM with a 5 s burst, 6 % of calls failing (5xx, resets, malformed bodies):"
    )
    profile = "fast" if fast else "typical"
    async with surge.sim.serve(
        profile=profile, rpm=rpm, burst_seconds=5.0, faults=faults, seed=3
    ) as server:
        settings = JobSettings(
            input=str(source), output=str(output), base_url=server.url, rpm=rpm,
            concurrency=50, cache=False, max_retries=6, timeout=30.0,
        )  # fmt: skip
        report = await run_job(settings, display=ProgressDisplay(enabled=True, interval=2.0))
    s = report.summary
    stats = report.statistics
    console.print(
        f"done {s.done}/{s.total}, failed {s.failed}, in {report.wall_seconds:.1f} s; "
        f"{stats.retries if stats else 0} retries absorbed the faults, "
        f"{stats.rate_limited if stats else 0} answered 429. Output: {output}"
    )
    return output


async def run_demo(*, seed: int, out_dir: Path, fast: bool, console: Console) -> Path | None:
    profile = "fast" if fast else "typical"
    async with surge.sim.serve(profile=profile, seed=seed) as server:
        provider = OpenAIProvider(base_url=server.url, api_key=None, max_connections=100)
        try:
            render(await seven_call_comparison(chat_call(provider, "seven")), console)
            await many_calls(chat_call(provider, "many"), 100 if fast else 1000, 50, console)
        finally:
            await provider.aclose()
    output = await batch_job(out_dir, 60 if fast else 300, console, fast=fast)
    try:
        from surge.report import build_report
    except ImportError:
        console.print("(the HTML report needs surge.report, not installed here)")
        return None
    html = out_dir / "demo-report.html"
    build_report(Path(f"{output}.journal"), html)
    console.print(f"\nReport: [bold]{html.resolve()}[/] (open it in a browser)")
    return html


@app.command()
def demo(
    seed: int = typer.Option(7, help="Seed for the simulator's latencies and faults."),
    out_dir: Path = typer.Option(Path("surge-demo"), help="Where the batch job and report go."),
    fast: bool = typer.Option(False, "--fast", help="Zero latency and fewer calls (a smoke test)."),
) -> None:
    """Show the speed-up on the built-in simulator: no key, no network."""
    console = Console()
    start = time.monotonic()
    asyncio.run(run_demo(seed=seed, out_dir=out_dir, fast=fast, console=console))
    console.print(f"\n(demo took {time.monotonic() - start:.0f} s)")
