"""Rate-limit utilisation: surge against the usual ways, each on its own simulator.

Every contender gets its own simulator at the same limits (default 600 RPM, 100,000 TPM,
a burst of 10 s of rate: the server accepts 100 requests at once) and the same N
requests; all run at the same time in one process, so machine noise hits them alike.

The physical limit: the server admits its burst at once and then `rate` per second, so
N requests cannot all be admitted before (N - burst) / rate seconds; the last answer
follows one call latency later. Utilisation after the first 10 s is the admitted rate
over the rest of the dispatch time, against the limit.

    python benchmarks/rate_limit.py [--requests 2000] [--rpm 600] [--tpm 100000]

Peers that pin conflicting versions (bespokelabs-curator, LiteLLM's Router) run in
their own venvs: `bash benchmarks/peers/setup.sh` makes them under .peers/, and each
is driven by benchmarks/peers/*_driver.py in a subprocess against its own simulator
here (skipped, with a note, where its venv is missing; --peers-dir to look elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import surge
import surge.sim
from surge.jobs import JobSettings, run_job

MAX_TOKENS = 100


def body(i: int) -> dict[str, Any]:
    return {
        "model": "sim-small",
        "messages": [{"role": "user", "content": f"Request {i}: write one line about the sea."}],
        "max_tokens": MAX_TOKENS,
    }


@dataclass
class Outcome:
    name: str
    wall: float
    ok: int
    stats: dict[str, Any]


async def retrying_post(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> int:
    """What hand-written loops do: on 429, sleep Retry-After (or 1 s) and go again."""
    while True:
        response = await client.post(url, json=payload)
        if response.status_code != 429:
            return response.status_code
        await asyncio.sleep(float(response.headers.get("retry-after", 1)))


async def hand_written(url: str, n: int, rpm: int) -> int:
    semaphore = asyncio.Semaphore(50)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:

        async def one(i: int) -> int:
            async with semaphore:
                return await retrying_post(client, url + "/chat/completions", body(i))

        statuses = await asyncio.gather(*(one(i) for i in range(n)))
    return sum(s == 200 for s in statuses)


async def aiometer_polite(url: str, n: int, rpm: int) -> int:
    import aiometer

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:

        async def one(i: int) -> int:
            return await retrying_post(client, url + "/chat/completions", body(i))

        statuses = await aiometer.run_all(
            [functools.partial(one, i) for i in range(n)], max_at_once=50, max_per_second=rpm / 60
        )
    return sum(s == 200 for s in statuses)


async def surge_run(url: str, n: int, rpm: int, workdir: Path) -> int:
    source = workdir / "input.jsonl"
    with source.open("w") as handle:
        for i in range(n):
            line = {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body(i),
            }
            handle.write(json.dumps(line) + "\n")
    settings = JobSettings(
        input=str(source), output=str(workdir / "out.jsonl"), base_url=url, concurrency=50,
        rpm=rpm, cache=False,
    )  # fmt: skip
    report = await run_job(settings)
    return report.summary.done


PEERS: dict[str, tuple[str, str, list[str]]] = {  # name: venv, driver, extra arguments
    "curator": ("curator-venv", "curator_driver.py", []),
    "LiteLLM Router": ("litellm-venv", "litellm_driver.py", []),
    "LiteLLM usage-based-v2": (
        "litellm-venv", "litellm_driver.py", ["--routing-strategy", "usage-based-routing-v2"]
    ),
}  # fmt: skip


class Peer:
    """A peer library in its own venv (benchmarks/peers/setup.sh), driven as a subprocess.

    ``start`` waits until the driver has imported everything and says ``ready``; the
    call then hands it the simulator's URL, so its clock starts where the others' do.
    """

    def __init__(self, python: Path, driver: Path, argv: list[str]) -> None:
        self.command = [str(python), str(driver), "--base-url", "-", *argv]
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if line.strip() != b"ready":
            _, err = await self.process.communicate()
            raise RuntimeError(f"{self.command[1]} did not start: {err.decode()[-2000:]}")

    async def __call__(self, url: str) -> int:
        assert self.process is not None
        out, err = await self.process.communicate(url.encode() + b"\n")
        lines = [line for line in out.decode().splitlines() if line.startswith("{")]
        if self.process.returncode or not lines:
            raise RuntimeError(f"{self.command[1]} failed: {err.decode()[-2000:]}")
        return int(json.loads(lines[-1])["ok"])


async def start_peers(peers_dir: Path, n: int, rpm: int, tpm: int) -> dict[str, Peer]:
    here = Path(__file__).parent / "peers"
    argv = ["--requests", str(n), "--rpm", str(rpm), "--tpm", str(tpm), "--api-key", "sk-peer"]
    peers: dict[str, Peer] = {}
    for name, (venv, driver, extra) in PEERS.items():
        python = peers_dir / venv / "bin" / "python"
        if not python.exists():
            print(f"skipping {name}: no {python} (run benchmarks/peers/setup.sh)")
            continue
        peers[name] = Peer(python, here / driver, argv + extra)
    await asyncio.gather(*(peer.start() for peer in peers.values()))
    return peers


async def measure(
    name: str, contender: Callable[[str], Awaitable[int]], limits: dict[str, Any]
) -> Outcome:
    async with surge.sim.serve(profile="typical", seed=1, **limits) as server:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ok = await contender(server.url)
        return Outcome(name, loop.time() - start, ok, server.stats())


def utilisation(stats: dict[str, Any], rate: float, skip: float = 10.0) -> float:
    timeline = stats["timeline"]
    admitted = [row["started"] - row["rate_limited"] for row in timeline]
    last = max((i for i, a in enumerate(admitted) if a > 0), default=0)
    window = admitted[int(skip) : last]  # full seconds after the burst, before the tail
    return sum(window) / (rate * len(window)) if window else float("nan")


def plot(outcomes: list[Outcome], rate: float, path: Path) -> None:
    """Admitted requests per second over time, one line per contender, in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (admitted_axis, refused_axis) = plt.subplots(
        2, 1, figsize=(10, 6.5), sharex=True, height_ratios=(3, 1.3)
    )
    for o in outcomes:
        timeline = o.stats["timeline"]
        seconds = [row["second"] for row in timeline]
        admitted_axis.plot(
            seconds, [r["started"] - r["rate_limited"] for r in timeline], label=o.name
        )
        refused_axis.plot(seconds, [r["rate_limited"] for r in timeline], label=o.name)
    admitted_axis.axhline(rate, color="black", linestyle="--", linewidth=1, label="limit")
    admitted_axis.set_ylabel("requests admitted / s")
    admitted_axis.set_ylim(0, rate * 3)
    admitted_axis.legend(loc="upper right")
    admitted_axis.set_title("Rate-limit utilisation (burst of 10 s of rate allowed at the start)")
    refused_axis.set_ylabel("429s / s")
    refused_axis.set_xlabel("seconds since start")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


async def main_async(args: argparse.Namespace) -> None:
    n, rpm = args.requests, args.rpm
    limits = {"rpm": rpm, "tpm": args.tpm, "burst_seconds": 10.0}
    burst = rpm / 60 * 10.0
    physical = (n - burst) / (rpm / 60)
    with tempfile.TemporaryDirectory() as workdir:
        contenders: dict[str, Callable[[str], Awaitable[int]]] = {
            "surge run": lambda url: surge_run(url, n, rpm, Path(workdir)),
            "gather + Semaphore(50)": lambda url: hand_written(url, n, rpm),
            "aiometer max_per_second": lambda url: aiometer_polite(url, n, rpm),
        }
        contenders.update(await start_peers(Path(args.peers_dir), n, rpm, args.tpm))
        outcomes = await asyncio.gather(
            *(measure(name, fn, limits) for name, fn in contenders.items())
        )
    print(
        f"\nRate-limit utilisation: {n:,} requests, simulator at {rpm} RPM / {args.tpm:,} TPM, "
        f"burst {burst:.0f} requests, ~0.85 s calls (Python {platform.python_version()}, {platform.machine()})"
    )
    print(f"physical limit: (N - burst) / rate = {physical:.1f} s to admit the last request\n")
    print(
        "| contender               | ok    | wall s | wall / physical | util. after 10 s | 429 share of responses |"
    )
    print(
        "|-------------------------|-------|--------|-----------------|------------------|------------------------|"
    )
    for o in outcomes:
        total = o.stats["requests"]
        rejected = o.stats["by_status"].get("429", 0)
        print(
            f"| {o.name:23} | {o.ok:5,} | {o.wall:6.1f} | {o.wall / physical:15.3f} | "
            f"{utilisation(o.stats, rpm / 60):16.1%} | {rejected / total:22.1%} |"
        )
    if args.plot:
        plot(outcomes, rpm / 60, Path(args.plot))
        print(f"\nplot: {args.plot}")
    print(
        f"\nreproduce: python benchmarks/rate_limit.py --requests {n} --rpm {rpm} --tpm {args.tpm}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--tpm", type=int, default=100_000)
    parser.add_argument(
        "--peers-dir", default=os.environ.get("SURGE_PEERS_DIR", ".peers"),
        help="venvs made by benchmarks/peers/setup.sh; a missing one is skipped",
    )  # fmt: skip
    parser.add_argument("--plot", default="benchmarks/figures/rate_limit.png", help="'' for none")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
