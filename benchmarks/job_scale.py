"""`surge run` at scale: peak memory by input size, and requests re-sent after a SIGKILL.

The simulator runs in a process of its own (zero latency, no limits unless asked), so
the job's peak RSS is the job's alone (measured with wait4 on the `surge run` process).

    python benchmarks/job_scale.py memory [--sizes 100000 1000000]
    python benchmarks/job_scale.py resume [--requests 2000] [--concurrency 50] [--rpm 3000]
        [--profile typical|fast] [--repeats 3] [--commit tick|batch]
    python benchmarks/job_scale.py throughput [--requests 20000] [--repeats 3]

`--commit batch` runs the job with the journal's earlier commit policy (every 50 results
or 1 s, patched in through a sitecustomize on the job's PYTHONPATH) for comparison with
today's group commit per event-loop tick; `throughput` runs both side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import statistics
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


# The journal's commit policy before the group commit per tick: every 50 results or 1 s.
BATCH_COMMIT = """
import time
from surge.jobs.journal import Journal

def _wrote(self):
    now = time.monotonic()
    self._batched = getattr(self, "_batched", 0) + 1
    if self._batched == 1:
        self._batch_started = now
    if self._batched >= 50 or now - self._batch_started >= 1.0:
        self._batched = 0
        self.commit()

Journal._wrote = _wrote
"""


def surge_run(
    source: Path, output: Path, url: str, *extra: str, commit: str = "tick"
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if commit == "batch":
        shim = Path(tempfile.mkdtemp(prefix="surge-batch-commit-"))
        (shim / "sitecustomize.py").write_text(BATCH_COMMIT)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "surge.cli", "run", str(source), "-o", str(output), "--base-url", url,
         "--no-cache", "--no-progress", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
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


jitter = random.Random(7)


def resume_once(
    n: int, concurrency: int, rpm: int, profile: str, commit: str
) -> tuple[float, int, int, int, int, int]:
    """One job killed with SIGKILL once a third is done plus 0-0.5 s, then rerun: (rate
    at the kill, done at the kill, output lines, duplicates, missing, re-sent)."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        simulator("--profile", profile, "--rpm", str(rpm), "--tpm", "1000000000") as url,
    ):
        source, output = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        write_input(source, n)
        args = ("--concurrency", str(concurrency), "--rpm", str(rpm))
        process = surge_run(source, output, url, *args, commit=commit)
        journal = Path(f"{output}.journal")
        started, first = time.perf_counter(), 0
        while (done := done_count(journal)) < n // 3:
            if first == 0 and done > 0:
                started, first = time.perf_counter(), done
            time.sleep(0.005)
        # Not right after a commit (which is when the count above moves): at a moment
        # of the clock's choosing, as a real crash would be.
        time.sleep(jitter.uniform(0.0, 0.5))
        rate = (done_count(journal) - first) / (time.perf_counter() - started)
        process.send_signal(signal.SIGKILL)
        process.wait()
        at_kill = done_count(journal)
        rerun = surge_run(source, output, url, *args, commit=commit)
        rerun.wait()
        ok = stats(url)["by_status"].get("200", 0)
        ids = [json.loads(x)["custom_id"] for x in output.read_text().splitlines()]
    return rate, at_kill, len(ids), len(ids) - len(set(ids)), n - len(set(ids)), ok - n


def resume(n: int, concurrency: int, rpm: int, profile: str, repeats: int, commit: str) -> None:
    runs = [resume_once(n, concurrency, rpm, profile, commit) for _ in range(repeats)]
    print(
        f"\nResume after SIGKILL (a third done, plus 0-0.5 s): {n:,} requests, `{profile}` simulator, {rpm:,} RPM, "
        f"concurrency {concurrency}, journal commit per {'tick' if commit == 'tick' else '50 results or 1 s'} "
        f"(Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs)\n"
    )
    print(
        "| run | results/s at kill | done at kill | output lines | duplicates | missing | re-sent (paid twice) | bound |"
    )
    print(
        "|-----|-------------------|--------------|--------------|------------|---------|----------------------|-------|"
    )
    for i, (rate, at_kill, lines, dupes, missing, resent) in enumerate(runs, 1):
        print(
            f"| {i:3} | {rate:17,.0f} | {at_kill:12,} | {lines:12,} | {dupes:10} | {missing:7} | "
            f"{resent:20} | {concurrency:5} |"
        )
    resent = [r[5] for r in runs]
    rates = [r[0] for r in runs]
    print(
        f"\nmedian re-sent {statistics.median(resent):g} (min {min(resent)}, max {max(resent)}), "
        f"median rate {statistics.median(rates):,.0f} results/s (min {min(rates):,.0f}, max {max(rates):,.0f})"
    )
    print(
        f"\nreproduce: python benchmarks/job_scale.py resume --requests {n} --concurrency "
        f"{concurrency} --rpm {rpm} --profile {profile} --repeats {repeats} --commit {commit}"
    )


def throughput(n: int, concurrency: int, repeats: int) -> None:
    """Whole jobs on the zero-latency simulator, the two commit policies alternating."""
    seconds: dict[str, list[float]] = {"tick": [], "batch": []}
    for _ in range(repeats):
        for commit in seconds:
            with tempfile.TemporaryDirectory() as tmp, simulator("--profile", "fast") as url:
                source, output = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
                write_input(source, n)
                start = time.perf_counter()
                process = surge_run(
                    source, output, url, "--concurrency", str(concurrency), commit=commit
                )
                process.wait()
                seconds[commit].append(time.perf_counter() - start)
                assert process.returncode == 0
    print(
        f"\n`surge run` throughput by journal commit policy: {n:,} requests, zero-latency "
        f"simulator, concurrency {concurrency}, {repeats} runs each, alternating "
        f"(Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs)\n"
    )
    print(
        "| commit                  | median req/s | min req/s | max req/s | runs (s)                 |"
    )
    print(
        "|-------------------------|--------------|-----------|-----------|--------------------------|"
    )
    for commit, label in (("batch", "every 50 results or 1 s"), ("tick", "per event-loop tick")):
        rates = [n / s for s in seconds[commit]]
        runs = ", ".join(f"{s:.1f}" for s in seconds[commit])
        print(
            f"| {label:23} | {statistics.median(rates):12,.0f} | {min(rates):9,.0f} | {max(rates):9,.0f} | {runs:24} |"
        )
    print(
        f"\nreproduce: python benchmarks/job_scale.py throughput --requests {n} "
        f"--concurrency {concurrency} --repeats {repeats}"
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
    res.add_argument("--profile", default="typical", help="typical (latency) or fast (none)")
    res.add_argument("--repeats", type=int, default=3)
    res.add_argument("--commit", choices=("tick", "batch"), default="tick")
    thr = sub.add_parser("throughput")
    thr.add_argument("--requests", type=int, default=20_000)
    thr.add_argument("--concurrency", type=int, default=50)
    thr.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.what == "memory":
        memory(args.sizes, args.concurrency)
    elif args.what == "resume":
        resume(args.requests, args.concurrency, args.rpm, args.profile, args.repeats, args.commit)
    else:
        throughput(args.requests, args.concurrency, args.repeats)


if __name__ == "__main__":
    main()
