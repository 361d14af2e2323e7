"""How many requests per second the simulator serves on one core at zero latency.

The server (`python -m surge.sim --profile fast`, i.e. `surge sim`) runs in its own
process pinned to one CPU; the load generator runs in another process pinned to a
different CPU, so the two never share a core. The load generator is `wrk` when it is
installed (`apt-get install wrk`): C, one thread, a Lua script that sends a distinct
body per request. Without wrk, a raw asyncio HTTP/1.1 client in N processes is used.

    python benchmarks/sim_capacity.py --duration 10 --connections 64

Prints a table: scenario, requests/s, server CPU use, wrk's latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import httpx

SCENARIOS: dict[str, dict[str, Any]] = {
    # name: (server options, path, body template; {i} is replaced per request)
    "chat": {
        "args": [],
        "path": "/v1/chat/completions",
        "body": '{"model":"m","messages":[{"role":"user","content":"Summarize item %d"}],'
        '"max_tokens":32}',
    },
    "chat+limits": {
        "args": ["--rpm", "1000000000", "--tpm", "1000000000000"],
        "path": "/v1/chat/completions",
        "body": '{"model":"m","messages":[{"role":"user","content":"Summarize item %d"}],'
        '"max_tokens":32}',
    },
    "chat-429": {
        "args": ["--rpm", "60", "--tpm", "1000000"],
        "path": "/v1/chat/completions",
        "body": '{"model":"m","messages":[{"role":"user","content":"Summarize item %d"}],'
        '"max_tokens":32}',
    },
    "chat-stream": {
        "args": [],
        "path": "/v1/chat/completions",
        "body": '{"model":"m","messages":[{"role":"user","content":"Summarize item %d"}],'
        '"max_tokens":32,"stream":true,"stream_options":{"include_usage":true}}',
    },
    "messages": {
        "args": [],
        "path": "/v1/messages",
        "body": '{"model":"c","max_tokens":32,"messages":[{"role":"user","content":"Item %d"}]}',
    },
    # The openai SDK asks for base64 unless told otherwise.
    "embeddings": {
        "args": [],
        "path": "/v1/embeddings",
        "body": '{"model":"e","input":["item %d"],"dimensions":256,"encoding_format":"base64"}',
    },
    # JSON floats cost ~0.6 µs each to print: 256 of them dominate the request.
    "embed-floats": {
        "args": [],
        "path": "/v1/embeddings",
        "body": '{"model":"e","input":["item %d"],"dimensions":256}',
    },
}

WRK_SCRIPT = """
counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
request = function()
  counter = counter + 1
  return wrk.format(nil, "%(path)s", nil, string.format('%(body)s', counter))
end
"""


@dataclass
class Outcome:
    scenario: str
    rps: float
    server_cpu: float
    p50_ms: float | None
    p99_ms: float | None
    served: int
    statuses: dict[str, int]


def start_server(args: list[str], cpu: int) -> tuple[subprocess.Popen[str], str]:
    # --any-model: the workloads name short models ("m", "c", "e").
    sim = ["-m", "surge.sim", "--port", "0", "--profile", "fast", "--any-model"]
    cmd = [sys.executable, *sim, *args]
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpu}))
        if hasattr(os, "sched_setaffinity")
        else None,
    )
    assert proc.stderr is not None
    banner = ""
    while "Anthropic base_url" not in banner:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"simulator did not start: {banner}")
        banner += line
    match = re.search(r"Anthropic base_url:\s+(http://\S+)", banner)
    assert match is not None
    return proc, match.group(1)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    base: str, scenario: dict[str, Any], seconds: float, connections: int, cpu: int
) -> tuple[float, float | None, float | None]:
    script = WRK_SCRIPT % {"path": scenario["path"], "body": scenario["body"].replace("'", "\\'")}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", f.name, base]
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu), *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float | None:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return rps, pct("50"), pct("99")


async def _raw_client(
    host: str, port: int, path: str, body: str, connections: int, seconds: float, offset: int
) -> int:
    done = 0
    deadline = time.perf_counter() + seconds

    async def conn(c: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, port)
        i = offset + c * 10_000_000
        while time.perf_counter() < deadline:
            payload = (body % i).encode()
            i += 1
            writer.write(
                f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                f"authorization: Bearer bench\r\ncontent-length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"content-length: (\d+)", head, re.I)
            if m:
                await reader.readexactly(int(m.group(1)))
            else:  # chunked (streams)
                while True:
                    size = int((await reader.readline()).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            done += 1
        writer.close()

    await asyncio.gather(*(conn(c) for c in range(connections)))
    return done


def _raw_worker(args: tuple[str, int, str, str, int, float, int, int]) -> int:
    *rest, cpu = args
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    try:
        import uvloop

        return uvloop.run(_raw_client(*rest))  # type: ignore[no-any-return]
    except ImportError:
        return asyncio.run(_raw_client(*rest))


def run_raw(
    base: str, scenario: dict[str, Any], seconds: float, connections: int, cpus: list[int]
) -> float:
    from concurrent.futures import ProcessPoolExecutor

    host, port = base.removeprefix("http://").split(":")
    per = max(1, connections // len(cpus))
    jobs = [
        (host, int(port), scenario["path"], scenario["body"], per, seconds, n * 10**9, cpu)
        for n, cpu in enumerate(cpus)
    ]
    start = time.perf_counter()
    with ProcessPoolExecutor(len(cpus)) as pool:
        total = sum(pool.map(_raw_worker, jobs))
    return total / (time.perf_counter() - start)


def measure(
    name: str,
    seconds: float,
    connections: int,
    server_cpu: int,
    load_cpus: list[int],
    use_wrk: bool,
) -> Outcome:
    scenario = SCENARIOS[name]
    proc, base = start_server(scenario["args"], server_cpu)
    try:
        httpx.post(
            base + scenario["path"],
            content=scenario["body"] % 0,
            headers={"content-type": "application/json"},
        )  # warm up
        httpx.post(base + "/sim/reset")
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        if use_wrk:
            rps, p50, p99 = run_wrk(base, scenario, seconds, connections, load_cpus[0])
        else:
            rps, p50, p99 = run_raw(base, scenario, seconds, connections, load_cpus), None, None
        cpu = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
        stats = httpx.get(base + "/sim/stats", timeout=30).json()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    return Outcome(name, rps, cpu, p50, p99, stats["requests"], stats["by_status"])


async def seven_calls() -> tuple[float, float]:
    """The `typical` profile against the published 7-call figures (6.17 s / 0.85 s)."""
    import openai

    from surge.sim import serve

    async with serve(profile="typical") as server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="k", max_retries=0)
        async with client:

            async def call(i: int) -> None:
                content = f"Summarize topic {i} in 5 words"
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": content}]
                )

            await call(-1)  # warm the connection pool
            start = time.perf_counter()
            for i in range(7):
                await call(i)
            sequential = time.perf_counter() - start
            start = time.perf_counter()
            await asyncio.gather(*(call(i) for i in range(7, 14)))
            return sequential, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--no-wrk", action="store_true", help="use the Python load generator")
    opts = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0, 1]
    if len(cpus) < 2:
        sys.exit("needs at least 2 CPUs: one for the server, one for the load generator")
    server_cpu, load_cpus = cpus[0], cpus[1:]
    use_wrk = shutil.which("wrk") is not None and not opts.no_wrk
    tool = (
        f"wrk -t1 -c{opts.connections}"
        if use_wrk
        else f"asyncio raw client × {len(load_cpus)} processes"
    )
    print(
        f"# simulator capacity: server pinned to CPU {server_cpu}, load ({tool}) on CPUs {load_cpus}"
    )
    print(
        f"# {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )
    print()
    # req/CPU-s = requests per second of server CPU time: what one whole core would serve,
    # still meaningful when other jobs steal part of the server's core.
    print("| scenario     | requests/s | server CPU | req/CPU-s | p50 ms | p99 ms | statuses |")
    print("|--------------|------------|------------|-----------|--------|--------|----------|")
    for name in opts.scenarios.split(","):
        o = measure(name, opts.duration, opts.connections, server_cpu, load_cpus, use_wrk)
        p50 = f"{o.p50_ms:.2f}" if o.p50_ms is not None else "-"
        p99 = f"{o.p99_ms:.2f}" if o.p99_ms is not None else "-"
        per_cpu = o.rps / o.server_cpu if o.server_cpu > 0 else float("nan")
        print(
            f"| {o.scenario:<12} | {o.rps:>10,.0f} | {o.server_cpu:>9.0%} | {per_cpu:>9,.0f} "
            f"| {p50:>6} | {p99:>6} | {json.dumps(o.statuses)} |"
        )
    sequential, gathered = asyncio.run(seven_calls())
    print()
    print(
        f"typical profile, 7 calls via the openai SDK: sequential {sequential:.2f} s, "
        f"gather {gathered:.2f} s (published: 6.17 s and 0.85 s)"
    )
    print()
    print(
        f"`python benchmarks/sim_capacity.py --duration {opts.duration:g} --connections {opts.connections}"
        + (" --no-wrk" if opts.no_wrk else "")
        + "`"
    )


if __name__ == "__main__":
    main()
