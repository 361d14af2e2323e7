"""`surge run` at scale: peak memory by input size, and requests re-sent after a SIGKILL.

The simulator runs in a process of its own (zero latency, no limits unless asked), so
the job's peak RSS is the job's alone (measured with wait4 on the `surge run` process).

    python benchmarks/job_scale.py memory [--sizes 100000 1000000]
    python benchmarks/job_scale.py resume [--requests 4000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def simulator(*args: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "surge.sim", "--port", str(port), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        try:
            httpx.get(f"{url}/models", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url.removesuffix('/v1')}/sim/stats", timeout=10).json())


def write_input(path: Path, n: int) -> None:
    with path.open("w") as handle:
        for i in range(n):
            body = {
                "model": "sim-small",
                "messages": [{"role": "user", "content": f"Item {i}: one word."}],
                "max_tokens": 8,
            }
            handle.write(
                json.dumps(
                    {
                        "custom_id": f"r{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": body,
                    }
                )
                + "\n"
            )


def surge_run(source: Path, output: Path, url: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "surge.cli", "run", str(source), "-o", str(output), "--base-url", url,
         "--no-cache", "--no-progress", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def memory(sizes: list[int], concurrency: int) -> None:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp, simulator("--profile", "fast") as url:
            source, output = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
            write_input(source, n)
            start = time.perf_counter()
            process = surge_run(source, output, url, "--concurrency", str(concurrency))
            _, status, usage = os.wait4(process.pid, 0)
            elapsed = time.perf_counter() - start
            lines = sum(1 for _ in output.open()) if output.exists() else 0
            rows.append(
                (n, os.waitstatus_to_exitcode(status), lines, usage.ru_maxrss / 1024, elapsed)
            )
    print(
        f"\n`surge run` peak RSS by input size (zero-latency simulator in its own process, "
        f"concurrency {concurrency}; Python {platform.python_version()}, {platform.machine()})\n"
    )
    print("| lines     | exit | output lines | peak RSS (MB) | vs smallest | seconds | req/s  |")
    print("|-----------|------|--------------|---------------|-------------|---------|--------|")
    for n, code, lines, rss, elapsed in rows:
        print(
            f"| {n:9,} | {code:4} | {lines:12,} | {rss:13.1f} | {rss / rows[0][3]:10.2f}x | {elapsed:7.1f} | {n / elapsed:6.0f} |"
        )
    print(f"\nreproduce: python benchmarks/job_scale.py memory --sizes {' '.join(map(str, sizes))}")


def done_count(journal: Path) -> int:
    try:
        with sqlite3.connect(journal, timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM items WHERE state = 'done'").fetchone()[0])
    except sqlite3.Error:
        return 0


def resume(n: int, concurrency: int, rpm: int) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        simulator("--profile", "typical", "--rpm", str(rpm), "--tpm", "10000000") as url,
    ):
        source, output = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        write_input(source, n)
        args = ("--concurrency", str(concurrency), "--rpm", str(rpm))
        process = surge_run(source, output, url, *args)
        journal = Path(f"{output}.journal")
        while done_count(journal) < n // 2:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        at_kill = done_count(journal)
        rerun = surge_run(source, output, url, *args)
        rerun.wait()
        sim = stats(url)
        lines = [json.loads(x) for x in output.read_text().splitlines()]
    ok = sim["by_status"].get("200", 0)
    resent = ok - n
    ids = [x["custom_id"] for x in lines]
    print(
        f"\nResume after SIGKILL at 50 %: {n:,} requests, typical latency, {rpm} RPM, "
        f"concurrency {concurrency} (Python {platform.python_version()}, {platform.machine()})\n"
    )
    print(
        "| done at kill | output lines | duplicates | missing | 200s served | re-sent (paid twice) | bound (concurrency) |"
    )
    print(
        "|--------------|--------------|------------|---------|-------------|----------------------|---------------------|"
    )
    print(
        f"| {at_kill:12,} | {len(lines):12,} | {len(ids) - len(set(ids)):10} | {n - len(set(ids)):7} | "
        f"{ok:11,} | {resent:20} | {concurrency:19} |"
    )
    print(
        f"\nreproduce: python benchmarks/job_scale.py resume --requests {n} --concurrency {concurrency} --rpm {rpm}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    mem = sub.add_parser("memory")
    mem.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    mem.add_argument("--concurrency", type=int, default=50)
    res = sub.add_parser("resume")
    res.add_argument("--requests", type=int, default=2000)
    res.add_argument("--concurrency", type=int, default=50)
    res.add_argument("--rpm", type=int, default=3000)
    args = parser.parse_args()
    if args.what == "memory":
        memory(args.sizes, args.concurrency)
    else:
        resume(args.requests, args.concurrency, args.rpm)


if __name__ == "__main__":
    main()
