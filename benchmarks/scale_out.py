"""Scale-out: N workers sharing one provider limit, against the simulator.

Runs, each on a fresh simulator at the same binding limit (RPM with a burst of
--burst seconds, as OpenAI's per-minute limits are enforced):
- surge-ray: surge.ray.Processor, --workers workers on a local multi-node Ray cluster
  (one node of one CPU per worker), one limit shared through the ledger actor;
- ray-llm-split / ray-llm-full: Ray Data LLM's HttpRequestProcessorConfig with
  qps = limit / workers and qps = limit (per worker), max_retries=3;
- surge-run-redis: --workers `surge run --shared-limit redis://...` processes, each on
  its slice of the rows, sharing one limit through a redis-server started here;
- litellm-redis: --workers processes of LiteLLM's Router (benchmarks/peers/
  litellm_driver.py in the venv benchmarks/peers/setup.sh makes under --peers-dir), each
  on its slice, the deployment's rpm = the limit, usage shared through a redis-server
  on loopback (the Router's redis_host/redis_port); each process's clock starts after
  its imports.
Then the per-call cost of the limiter itself (acquire + release, µs) with no store,
with the in-process ledger and with Redis, at a limit that never binds.

Prints a table: wall time over the physical limit ((N - burst) / rate), steady
utilisation (answered / (rate * wall) after the burst), 429 share, requests sent.

    python benchmarks/scale_out.py --requests 10000 --rpm 3000 --workers 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import surge
import surge.sim

COMMAND = "python benchmarks/scale_out.py " + " ".join(sys.argv[1:])


def row_of(
    name: str, stats: dict[str, Any], wall: float, args: argparse.Namespace, answered: int
) -> dict[str, Any]:
    rate = args.rpm / 60.0
    burst = rate * args.burst
    physical = max(args.requests - burst, 0.0) / rate
    limited = stats["by_status"].get("429", 0)
    # The seconds the server saw requests in: the wall time less the workers' start-up.
    busy = [t["second"] for t in stats["timeline"] if t["started"]]
    serving = (busy[-1] - busy[0] + 1) if busy else float("nan")
    return {
        "run": name,
        "wall_s": wall,
        "wall_over_physical": wall / physical if physical else float("nan"),
        "serving_s": serving,
        "serving_over_physical": serving / physical if physical else float("nan"),
        "utilisation": (answered - burst) / (rate * wall) if wall else float("nan"),
        "share_429": limited / max(1, stats["requests"]),
        "requests_sent": stats["requests"],
        "answered": answered,
    }


def prompts(n: int) -> list[dict[str, Any]]:
    return [{"prompt": f"Question {i}: name a colour.", "n": i} for i in range(n)]


def start_cluster(workers: int) -> Any:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    for _ in range(workers - 1):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return cluster


def run_surge_ray(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    import surge.ray

    with surge.sim.serve_in_thread(rpm=args.rpm, burst_seconds=args.burst, seed=1) as server:
        processor = surge.ray.Processor(
            base_url=server.url, model="sim-small", rpm=args.rpm, workers=args.workers,
            concurrency_per_worker=args.concurrency, num_cpus=0.5, key=f"bench-{time.time()}",
        )  # fmt: skip
        ds = ray.data.from_items(prompts(args.requests), override_num_blocks=args.workers * 4)
        start = time.monotonic()
        out = processor(ds).take_all()
        wall = time.monotonic() - start
        stats = server.stats()
    answered = sum(1 for r in out if r["error"] is None)
    return row_of("surge-ray", stats, wall, args, answered)


def run_ray_llm(args: argparse.Namespace, qps: float, name: str) -> dict[str, Any]:
    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    with surge.sim.serve_in_thread(rpm=args.rpm, burst_seconds=args.burst, seed=1) as server:
        config = HttpRequestProcessorConfig(
            url=server.url + "/chat/completions", headers={"Authorization": "Bearer bench"},
            qps=max(1, round(qps)), concurrency=args.workers, batch_size=64, max_retries=3,
        )  # fmt: skip
        processor = build_processor(
            config,
            preprocess=lambda row: {
                "payload": {
                    "model": "sim-small",
                    "messages": [{"role": "user", "content": row["prompt"]}],
                }
            },
            postprocess=lambda row: {"ok": "choices" in (row.get("http_response") or {})},
        )
        ds = ray.data.from_items(prompts(args.requests), override_num_blocks=args.workers * 4)
        start = time.monotonic()
        try:
            out = processor(ds).take_all()
            answered = sum(1 for r in out if r["ok"])
        except Exception as error:  # a refused request fails the whole Dataset
            print(f"{name}: the Dataset failed: {type(error).__name__}: {str(error)[:200]}")
            answered = 0
        wall = time.monotonic() - start
        stats = server.stats()
    return row_of(name, stats, wall, args, answered)


def run_surge_run_redis(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed: apt-get install -y redis-server")
    folder = Path(tempfile.mkdtemp(prefix="surge-scale-out-"))
    socket = folder / "redis.sock"
    redis = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(socket),
            "--save",
            "",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        while not socket.exists():
            time.sleep(0.02)
        with surge.sim.serve_in_thread(rpm=args.rpm, burst_seconds=args.burst, seed=1) as server:
            jobs = []
            share = -(-args.requests // args.workers)
            env = {**os.environ, "SURGE_CACHE_DIR": str(folder / "cache")}
            start = time.monotonic()
            for w in range(args.workers):
                path = folder / f"in{w}.jsonl"
                with path.open("w") as handle:
                    for item in prompts(args.requests)[w * share : (w + 1) * share]:
                        body = {
                            "model": "sim-small",
                            "messages": [{"role": "user", "content": item["prompt"]}],
                        }
                        handle.write(
                            json.dumps(
                                {
                                    "custom_id": f"q{item['n']}",
                                    "method": "POST",
                                    "url": "/v1/chat/completions",
                                    "body": body,
                                }
                            )
                            + "\n"
                        )
                command = [
                    sys.executable, "-m", "surge.cli", "run", str(path), "-o", str(folder / f"out{w}.jsonl"),
                    "--base-url", server.url, "--rpm", str(args.rpm), "--concurrency", str(args.concurrency),
                    "--shared-limit", f"unix://{socket}", "--shared-key", "bench", "--no-progress",
                ]  # fmt: skip
                jobs.append(
                    subprocess.Popen(
                        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                )
            for job in jobs:
                job.wait()
            wall = time.monotonic() - start
            stats = server.stats()
        answered = sum(
            1
            for w in range(args.workers)
            for line in (folder / f"out{w}.jsonl").read_text().splitlines()
            if json.loads(line).get("error") is None
        )
    finally:
        redis.terminate()
        redis.wait()
    return row_of("surge-run-redis", stats, wall, args, answered)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def run_litellm_redis(args: argparse.Namespace) -> dict[str, Any] | None:
    python = Path(args.peers_dir) / "litellm-venv" / "bin" / "python"
    if not python.exists():
        print(f"skipping litellm-redis: no {python} (run benchmarks/peers/setup.sh)")
        return None
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed: apt-get install -y redis-server")
    folder = Path(tempfile.mkdtemp(prefix="surge-scale-out-litellm-"))
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    driver = Path(__file__).parent / "peers" / "litellm_driver.py"
    share = -(-args.requests // args.workers)
    jobs: list[subprocess.Popen[str]] = []
    try:
        import redis as redis_client

        client = redis_client.Redis(host="127.0.0.1", port=port)
        for _ in range(250):
            try:
                client.ping()
                break
            except redis_client.ConnectionError:
                time.sleep(0.02)
        with surge.sim.serve_in_thread(rpm=args.rpm, burst_seconds=args.burst, seed=1) as server:
            for w in range(args.workers):
                n = min(share, args.requests - w * share)
                command = [
                    str(python), str(driver), "--base-url", "-", "--requests", str(n),
                    "--rpm", str(int(args.rpm)), "--tpm", "1000000000", "--offset", str(w * share),
                    "--redis-host", "127.0.0.1", "--redis-port", str(port),
                ]  # fmt: skip
                job = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, text=True,
                )  # fmt: skip
                jobs.append(job)
            for job in jobs:  # every process has imported litellm: start the clocks
                assert job.stdout is not None
                if job.stdout.readline().strip() != "ready":
                    raise SystemExit("litellm_driver.py did not start (see its venv)")
            start = time.monotonic()
            for job in jobs:
                assert job.stdin is not None
                job.stdin.write(server.url + "\n")
                job.stdin.flush()
            outputs = [json.loads(job.communicate()[0].strip().splitlines()[-1]) for job in jobs]
            wall = time.monotonic() - start
            stats = server.stats()
        keys = sorted(k.decode() for k in client.scan_iter())  # the Router's usage counters
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
        redis.terminate()
        redis.wait()
    answered = sum(out["ok"] for out in outputs)
    errors: dict[str, int] = {}
    for out in outputs:
        for name, count in out["errors"].items():
            errors[name] = errors.get(name, 0) + count
    print(f"litellm-redis: Redis holds {keys[:4]} after the run; failed calls {errors}")
    return row_of("litellm-redis", stats, wall, args, answered)


def overhead(calls: int = 20_000) -> list[tuple[str, float, float]]:
    """µs per acquire + release, and exchanges with the store per 1,000 calls."""
    from surge._shared import MemoryStore

    results = []

    async def measure(limiter: surge.Limiter) -> float:
        for _ in range(200):  # warm up: bind, first lease
            limiter.release(await limiter.acquire(10))
        start = time.perf_counter()
        for _ in range(calls):
            limiter.release(await limiter.acquire(10), usage_tokens=10)
        return (time.perf_counter() - start) / calls * 1e6

    rpm, tpm = 6_000_000, 600_000_000  # never binds: the limiter's own cost only
    local = surge.Limiter(rpm=rpm, tpm=tpm)
    results.append(("single-process", asyncio.run(measure(local)), 0.0))
    shared = surge.Limiter(rpm=rpm, tpm=tpm, shared=MemoryStore(), key="bench")
    micro = asyncio.run(measure(shared))
    assert shared._shared is not None
    results.append(
        ("shared, in-process ledger", micro, shared._shared.exchanges / (calls + 200) * 1000)
    )
    if shutil.which("redis-server"):
        folder = Path(tempfile.mkdtemp(prefix="surge-redis-"))
        socket = folder / "redis.sock"
        redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                "0",
                "--unixsocket",
                str(socket),
                "--save",
                "",
                "--dir",
                str(folder),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            while not socket.exists():
                time.sleep(0.02)
            shared = surge.Limiter(rpm=rpm, tpm=tpm, shared=f"unix://{socket}", key="bench")
            micro = asyncio.run(measure(shared))
            assert shared._shared is not None
            results.append(
                ("shared, Redis", micro, shared._shared.exchanges / (calls + 200) * 1000)
            )
        finally:
            redis.terminate()
            redis.wait()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rpm", type=float, default=3000)
    parser.add_argument("--burst", type=float, default=10.0, help="the server's burst, seconds")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64, help="per worker")
    parser.add_argument(
        "--runs",
        default="surge-ray,ray-llm-split,ray-llm-full,surge-run-redis,litellm-redis,overhead",
    )
    parser.add_argument(
        "--peers-dir", default=os.environ.get("SURGE_PEERS_DIR", ".peers"),
        help="venvs made by benchmarks/peers/setup.sh (litellm-redis is skipped without one)",
    )  # fmt: skip
    args = parser.parse_args()
    runs = args.runs.split(",")
    rows = []
    cluster = None
    if any(r.startswith(("surge-ray", "ray-llm")) for r in runs):
        cluster = start_cluster(args.workers)
    try:
        for name in runs:
            if name == "surge-ray":
                rows.append(run_surge_ray(args))
            elif name == "ray-llm-split":
                rows.append(run_ray_llm(args, args.rpm / 60 / args.workers, name))
            elif name == "ray-llm-full":
                rows.append(run_ray_llm(args, args.rpm / 60, name))
            elif name == "surge-run-redis":
                rows.append(run_surge_run_redis(args))
            elif name == "litellm-redis" and (row := run_litellm_redis(args)) is not None:
                rows.append(row)
            if rows:
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if cluster is not None:
            import ray

            ray.shutdown()
            cluster.shutdown()
    print(
        f"\n{args.requests} requests, {args.rpm:.0f} RPM, {args.burst:.0f} s burst, {args.workers} workers"
    )
    print(
        f"{'run':<18}{'wall s':>9}{'wall/phys':>11}{'serving/phys':>14}{'util':>8}"
        f"{'429 %':>8}{'sent':>8}{'answered':>10}"
    )
    for r in rows:
        print(
            f"{r['run']:<18}{r['wall_s']:>9.1f}{r['wall_over_physical']:>11.3f}"
            f"{r['serving_over_physical']:>14.3f}"
            f"{r['utilisation']:>8.1%}{r['share_429']:>8.2%}{r['requests_sent']:>8}{r['answered']:>10}"
        )
    if "overhead" in runs:
        print(f"\n{'limiter':<28}{'µs/call':>9}{'exchanges/1k calls':>20}")
        for name, micro, per_thousand in overhead():
            print(f"{name:<28}{micro:>9.1f}{per_thousand:>20.1f}")
    print(f"\n{COMMAND}")


if __name__ == "__main__":
    main()
