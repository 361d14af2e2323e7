"""Scale-out: N workers sharing one provider limit, against the simulator.

Each run gets a fresh simulator. Three workloads, each a set of runs:

Main table (the default --runs): --requests chat requests at --rpm with a burst of
--burst seconds (as OpenAI's per-minute limits are enforced), in workers × 4 blocks.
- surge-ray: surge.ray.Processor, --workers workers on a local multi-node Ray cluster
  (one node of one CPU per worker), one limit shared through the ledger actor. The
  cluster is warmed once before the first run (its nodes' worker processes booted, as
  on a running cluster); each Ray run's wall time includes starting its actor pool;
- ray-llm-split / ray-llm-full: Ray Data LLM's HttpRequestProcessorConfig on a fixed
  pool of --workers actors with qps = limit / workers and qps = limit (per worker),
  max_retries=3. Its qps paces each batch on its own (the clock restarts with every
  batch, whose requests go out once its pacing is done) and Ray Data runs up to 4
  batches of an async UDF at once, so a worker can send several times qps;
- surge-run-redis: --workers `surge run --shared-limit redis://...` processes, each on
  its slice of the rows, sharing one limit through a redis-server started here;
- litellm-redis: --workers processes of LiteLLM's Router (benchmarks/peers/
  litellm_driver.py in the venv benchmarks/peers/setup.sh makes under --peers-dir), each
  on its slice, the deployment's rpm = the limit, usage shared through a redis-server
  on loopback (the Router's redis_host/redis_port); each process's clock starts after
  its imports.

Uneven blocks (surge-ray-uneven, ray-llm-split-uneven, ray-llm-full-uneven): the same
requests in workers + 1 blocks, like 4 input files on 3 workers, so at the end one
worker runs the last block while the others idle. A static split caps that worker at
limit / workers (Ray Data LLM: qps × the batches it runs at once); a shared limit lets
it use the whole limit, if it has the calls in flight to carry it: at rate R and latency L it needs R × L in flight. The simulator
answers at once unless --latency is given, so --concurrency 64 (per worker) carries
any rate here; with --latency, keep --concurrency above R × L (the script warns).

TPM-bound (surge-ray-tpm, ray-llm-split-tpm, ray-llm-full-tpm, surge-run-redis-tpm):
the simulator also has --tpm (default: half of what --rpm would need, so tokens bind,
not requests), and every request asks for its own max_tokens, drawn from a seeded
log-normal (median 200, 16..2048). surge gets tpm=; Ray Data LLM only has qps, so it
gets what a careful user would compute: tpm / 60 / mean tokens per request (/ workers
for -split), never above the rpm's qps.

Physical bound of a run: the simulator's buckets start full (burst seconds of rate)
and refill at the limit, so N requests need at least (N − request burst) / request
rate seconds, and (T − token burst) / token rate where T is the tokens they cost as
the simulator charges them at admission: its input count + max_tokens
(surge.sim.replies.request_cost; the reply's real length does not matter). The bound
is the larger of the two (`physical_s`).

overhead (in the default --runs): the limiter's per-call cost, acquire + release in
µs, with no store, the in-process ledger and Redis, at a limit that never binds.
--runs all runs every case above and overhead.

With --repeats K each selected run goes K times, interleaved (every case once, then
again...), so a swing in the machine's load hits every case alike. The table shows
the median of the K with the min–max in brackets: wall time over the physical bound,
the span the server saw requests in over it (serving/phys: wall less the workers'
start-up), utilisation (the physical bound of what was answered over the wall time),
429 share, requests sent, rows answered. --json PATH writes every run's raw row (with
its per-second timeline) as JSON lines.

    python benchmarks/scale_out.py --requests 10000 --rpm 3000 --workers 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import surge
import surge.sim
from surge.sim.config import Latency
from surge.sim.replies import request_cost
from surge.testing import redis_server

COMMAND = "python benchmarks/scale_out.py " + " ".join(sys.argv[1:])
MAIN_RUNS = ("surge-ray", "ray-llm-split", "ray-llm-full", "surge-run-redis", "litellm-redis")
UNEVEN_RUNS = ("surge-ray-uneven", "ray-llm-split-uneven", "ray-llm-full-uneven")
TPM_RUNS = ("surge-ray-tpm", "ray-llm-split-tpm", "ray-llm-full-tpm", "surge-run-redis-tpm")
ALL_RUNS = (*MAIN_RUNS, *UNEVEN_RUNS, *TPM_RUNS, "overhead")
MODEL = "sim-small"


def body_of(row: dict[str, Any]) -> dict[str, Any]:
    """The chat request for a row (a plain function: Ray pickles it to the workers)."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": row["prompt"]}]}
    if row.get("max_tokens") is not None:
        body["max_tokens"] = int(row["max_tokens"])
    return body


@dataclass(frozen=True)
class Workload:
    """The rows of one case, the simulator's limits, and the bound they imply."""

    kind: str  # "main", "uneven" or "tpm"
    rows: list[dict[str, Any]]
    rpm: float
    tpm: float | None
    burst: float
    blocks: int
    latency: Latency | None

    def sim(self) -> dict[str, Any]:
        changes: dict[str, Any] = {
            "rpm": round(self.rpm), "tpm": None if self.tpm is None else round(self.tpm),
            "burst_seconds": self.burst, "seed": 1,
        }  # fmt: skip
        if self.latency is not None:
            changes["latency"] = self.latency
        return changes

    def cost(self, row: dict[str, Any]) -> int:
        """Tokens the simulator charges the row at admission (input + max_tokens)."""
        return request_cost({"model": MODEL, **body_of(row)})

    def bounds(self, numbers: list[int] | None = None) -> dict[str, float]:
        """Seconds the server's buckets need for these rows (all by default), per bucket."""
        rows = self.rows if numbers is None else [self.rows[n] for n in numbers]
        out = {"requests": _bound(len(rows), self.rpm, self.burst)}
        if self.tpm is not None:
            out["tokens"] = _bound(sum(self.cost(r) for r in rows), self.tpm, self.burst)
        return out

    def mean_cost(self) -> float:
        return statistics.fmean(self.cost(r) for r in self.rows)

    def qps(self) -> float:
        """The whole request rate a careful user would set for this workload."""
        rate = self.rpm / 60.0
        if self.tpm is not None:
            rate = min(rate, self.tpm / 60.0 / self.mean_cost())
        return rate


def _bound(units: float, per_minute: float, burst: float) -> float:
    rate = per_minute / 60.0
    return max(units - rate * burst, 0.0) / rate


def prompts(n: int) -> list[dict[str, Any]]:
    return [{"prompt": f"Question {i}: name a colour.", "n": i} for i in range(n)]


def workloads(args: argparse.Namespace) -> dict[str, Workload]:
    latency = Latency.parse(args.latency) if args.latency else None
    main = Workload(
        "main", prompts(args.requests), args.rpm, None, args.burst, args.workers * 4, latency
    )
    rng = random.Random(7)
    rows = [
        {**row, "max_tokens": min(2048, max(16, round(rng.lognormvariate(math.log(200), 0.8))))}
        for row in prompts(args.requests)
    ]
    tpm = replace(main, kind="tpm", rows=rows)
    # Tokens bind at half the request limit: the case is about TPM, not RPM.
    tpm = replace(tpm, tpm=args.tpm or round(args.rpm * tpm.mean_cost() / 2))
    return {
        "main": main,
        "uneven": replace(main, kind="uneven", blocks=args.workers + 1),
        "tpm": tpm,
    }


def row_of(
    name: str, wl: Workload, stats: dict[str, Any], wall: float, answered: list[int]
) -> dict[str, Any]:
    bounds = wl.bounds()
    physical = max(bounds.values())
    limited = stats["by_status"].get("429", 0)
    # The seconds the server saw requests in: the wall time less the workers' start-up.
    busy = [t["second"] for t in stats["timeline"] if t["started"]]
    serving = (busy[-1] - busy[0] + 1) if busy else float("nan")
    done = max(wl.bounds(answered).values()) if answered else 0.0
    nan = float("nan")
    return {
        "run": name,
        "physical_s": physical,
        "bounds_s": bounds,
        "wall_s": wall,
        "wall_over_physical": wall / physical if physical else nan,
        "serving_s": serving,
        "serving_over_physical": serving / physical if physical else nan,
        # (answered − burst) / (rate × wall) in the binding unit: requests or tokens.
        "utilisation": done / wall if wall else nan,
        "share_429": limited / max(1, stats["requests"]),
        "requests_sent": stats["requests"],
        "answered": len(answered),
        "by_status": stats["by_status"],
        # [started, ok, 429] in each second of the server's life, for the JSON lines.
        "timeline": [[t["started"], t["ok"], t["rate_limited"]] for t in stats["timeline"]],
    }


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
    # A running cluster's nodes have their worker processes up: let these boot (seconds
    # on this machine) before any timed run, so no case pays for it. Every run still
    # starts its own actor pool, inside its wall time.
    items = ray.data.from_items([{"n": i} for i in range(workers * 4)], override_num_blocks=workers)
    items.map_batches(
        _Warm, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=0.5
    ).take_all()
    return cluster


class _Warm:
    def __call__(self, batch: Any) -> Any:
        return batch


def run_surge_ray(args: argparse.Namespace, wl: Workload, name: str) -> dict[str, Any]:
    import ray

    import surge.ray

    with surge.sim.serve_in_thread(**wl.sim()) as server:
        processor = surge.ray.Processor(
            base_url=server.url, model=MODEL, rpm=wl.rpm, tpm=wl.tpm, workers=args.workers,
            concurrency_per_worker=args.concurrency, num_cpus=0.5, preprocess=body_of,
            key=f"bench-{time.time()}",
        )  # fmt: skip
        ds = ray.data.from_items(wl.rows, override_num_blocks=wl.blocks)
        start = time.monotonic()
        out = processor(ds).take_all()
        wall = time.monotonic() - start
        stats = server.stats()
    return row_of(name, wl, stats, wall, [r["n"] for r in out if r["error"] is None])


def run_ray_llm(
    args: argparse.Namespace, wl: Workload, name: str, per_worker: float
) -> dict[str, Any]:
    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    qps = max(1, round(per_worker))  # the config takes an int
    with surge.sim.serve_in_thread(**wl.sim()) as server:
        config = HttpRequestProcessorConfig(
            url=server.url + "/chat/completions", headers={"Authorization": "Bearer bench"},
            qps=qps, batch_size=64, max_retries=3,
            # A fixed pool of `workers` actors, as surge.ray's: an int is an autoscaling
            # pool of 1..workers, which ran one actor for most of a 900-row job, and
            # qps = limit / workers assumes they all run.
            concurrency=(args.workers, args.workers),
        )  # fmt: skip
        processor = build_processor(
            config,
            preprocess=lambda row: {"payload": {"model": MODEL, **body_of(row)}, "n": row["n"]},
            postprocess=lambda row: {
                "ok": "choices" in (row.get("http_response") or {}),
                "n": row["n"],
            },
        )
        ds = ray.data.from_items(wl.rows, override_num_blocks=wl.blocks)
        start = time.monotonic()
        failed = False
        try:
            answered = [r["n"] for r in processor(ds).take_all() if r["ok"]]
        except Exception as error:  # a refused request fails the whole Dataset
            print(f"{name}: the Dataset failed: {type(error).__name__}: {str(error)[:200]}")
            answered, failed = [], True
        wall = time.monotonic() - start
        stats = server.stats()
    return {**row_of(name, wl, stats, wall, answered), "qps_per_worker": qps, "failed": failed}


def run_surge_run_redis(args: argparse.Namespace, wl: Workload, name: str) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="surge-scale-out-"))
    limits = ["--rpm", str(wl.rpm)] + ([] if wl.tpm is None else ["--tpm", str(wl.tpm)])
    with redis_server() as url, surge.sim.serve_in_thread(**wl.sim()) as server:
        jobs = []
        share = -(-len(wl.rows) // args.workers)
        env = {**os.environ, "SURGE_CACHE_DIR": str(folder / "cache")}
        start = time.monotonic()
        for w in range(args.workers):
            path = folder / f"in{w}.jsonl"
            with path.open("w") as handle:
                for row in wl.rows[w * share : (w + 1) * share]:
                    line = {
                        "custom_id": f"q{row['n']}", "method": "POST",
                        "url": "/v1/chat/completions", "body": {"model": MODEL, **body_of(row)},
                    }  # fmt: skip
                    handle.write(json.dumps(line) + "\n")
            command = [
                sys.executable, "-m", "surge.cli", "run", str(path), "-o", str(folder / f"out{w}.jsonl"),
                "--base-url", server.url, *limits, "--concurrency", str(args.concurrency),
                "--shared-limit", url, "--shared-key", "bench", "--no-progress",
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
    answered = []
    for w in range(args.workers):
        for text in (folder / f"out{w}.jsonl").read_text().splitlines():
            result = json.loads(text)
            if result.get("error") is None:
                answered.append(int(result["custom_id"][1:]))
    shutil.rmtree(folder, ignore_errors=True)
    return row_of(name, wl, stats, wall, answered)


def run_litellm_redis(args: argparse.Namespace, wl: Workload, name: str) -> dict[str, Any] | None:
    python = Path(args.peers_dir) / "litellm-venv" / "bin" / "python"
    if not python.exists():
        print(f"skipping litellm-redis: no {python} (run benchmarks/peers/setup.sh)")
        return None
    driver = Path(__file__).parent / "peers" / "litellm_driver.py"
    n_rows = len(wl.rows)
    share = -(-n_rows // args.workers)
    jobs: list[subprocess.Popen[str]] = []
    with redis_server(tcp=True) as url:
        host, port = url.removeprefix("redis://").removesuffix("/0").split(":")
        try:
            with surge.sim.serve_in_thread(**wl.sim()) as server:
                for w in range(args.workers):
                    n = min(share, n_rows - w * share)
                    command = [
                        str(python), str(driver), "--base-url", "-", "--requests", str(n),
                        "--rpm", str(int(wl.rpm)), "--tpm", "1000000000", "--offset", str(w * share),
                        "--redis-host", host, "--redis-port", port,
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
                outputs = [
                    json.loads(job.communicate()[0].strip().splitlines()[-1]) for job in jobs
                ]
                wall = time.monotonic() - start
                stats = server.stats()
            import redis as redis_client

            keys = sorted(k.decode() for k in redis_client.Redis.from_url(url).scan_iter())
        finally:
            for job in jobs:
                if job.poll() is None:
                    job.kill()
    ok = sum(out["ok"] for out in outputs)
    errors: dict[str, int] = {}
    for out in outputs:
        for error, count in out["errors"].items():
            errors[error] = errors.get(error, 0) + count
    print(f"litellm-redis: Redis holds {keys[:4]} after the run; failed calls {errors}")
    # The driver reports counts, not which rows: in this workload every row costs alike.
    return row_of(name, wl, stats, wall, list(range(ok)))


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
        with redis_server() as url:
            shared = surge.Limiter(rpm=rpm, tpm=tpm, shared=url, key="bench")
            micro = asyncio.run(measure(shared))
            assert shared._shared is not None
            results.append(
                ("shared, Redis", micro, shared._shared.exchanges / (calls + 200) * 1000)
            )
    return results


def kind_of(name: str) -> str:
    """The workload of a --runs name: its suffix, if any."""
    return next((k for k in ("uneven", "tpm") if name.endswith("-" + k)), "main")


def run_case(
    args: argparse.Namespace, wls: dict[str, Workload], name: str
) -> dict[str, Any] | None:
    wl = wls[kind_of(name)]
    engine = name.removesuffix("-" + wl.kind)
    if engine == "surge-ray":
        return run_surge_ray(args, wl, name)
    if engine == "ray-llm-split":
        return run_ray_llm(args, wl, name, wl.qps() / args.workers)
    if engine == "ray-llm-full":
        return run_ray_llm(args, wl, name, wl.qps())
    if engine == "surge-run-redis":
        return run_surge_run_redis(args, wl, name)
    return run_litellm_redis(args, wl, name)


def spread(values: list[float], fmt: str) -> str:
    """The median, and the min–max when there are several."""
    middle = format(statistics.median(values), fmt)
    if len(values) < 2:
        return middle
    return f"{middle} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def print_table(rows: list[dict[str, Any]], names: list[str]) -> None:
    columns = [
        ("wall/phys", "wall_over_physical", ".3f", 1.0),
        ("serving/phys", "serving_over_physical", ".3f", 1.0),
        ("util %", "utilisation", ".1f", 100.0),
        ("429 %", "share_429", ".2f", 100.0),
        ("sent", "requests_sent", ".0f", 1.0),
        ("answered", "answered", ".0f", 1.0),
    ]
    cells = []
    for name in names:
        mine = [r for r in rows if r["run"] == name]
        if not mine:
            continue
        failed = sum(bool(r.get("failed")) for r in mine)
        label = f"{name} (failed {failed}/{len(mine)})" if failed else name
        line = [label, f"{mine[0]['physical_s']:.1f}", spread([r["wall_s"] for r in mine], ".1f")]
        line += [spread([r[key] * scale for r in mine], fmt) for _, key, fmt, scale in columns]
        cells.append(line)
    header = ["run", "phys s", "wall s", *(title for title, *_ in columns)]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    for line in [header, *cells]:
        print(
            line[0].ljust(widths[0]),
            *(c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rpm", type=float, default=3000)
    parser.add_argument(
        "--tpm", type=float, default=None,
        help="the -tpm cases' token limit (default: rpm × mean tokens per request / 2, so tokens bind)",
    )  # fmt: skip
    parser.add_argument("--burst", type=float, default=10.0, help="the server's burst, seconds")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64, help="per worker")
    parser.add_argument(
        "--latency", default=None,
        help="the simulator's TTFT[,PER_TOKEN[,JITTER]] seconds (default: it answers at once)",
    )  # fmt: skip
    parser.add_argument(
        "--runs", default=",".join((*MAIN_RUNS, "overhead")),
        help=f"comma-separated, or 'all': {', '.join(ALL_RUNS)}",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case, interleaved")
    parser.add_argument("--json", default=None, help="write every run's raw row here (JSON lines)")
    parser.add_argument(
        "--peers-dir", default=os.environ.get("SURGE_PEERS_DIR", ".peers"),
        help="venvs made by benchmarks/peers/setup.sh (litellm-redis is skipped without one)",
    )  # fmt: skip
    args = parser.parse_args()
    names = list(ALL_RUNS) if args.runs == "all" else args.runs.split(",")
    unknown = [n for n in names if n not in ALL_RUNS]
    if unknown:
        parser.error(f"unknown --runs {unknown}; known: all, {', '.join(ALL_RUNS)}")
    wls = workloads(args)
    if args.latency:
        latency = Latency.parse(args.latency)
        need = wls["main"].qps() * latency.median(40)  # the simulator's longest reply
        if need > args.concurrency:
            print(
                f"warning: a lone worker needs {need:.0f} calls in flight to carry the whole "
                f"rate at this latency; --concurrency {args.concurrency} cannot (-uneven cases)"
            )
    tpm = wls["tpm"]
    print(
        f"{args.requests} requests, {args.rpm:.0f} RPM, {args.burst:g} s burst, {args.workers} "
        f"workers, {args.concurrency} in flight per worker; -tpm cases: {tpm.tpm:.0f} TPM, "
        f"{tpm.mean_cost():.1f} tokens per request (input + max_tokens), {args.repeats} repeats",
        flush=True,
    )
    output = open(args.json, "w") if args.json else None  # noqa: SIM115 - held across runs
    rows: list[dict[str, Any]] = []
    costs: list[list[tuple[str, float, float]]] = []
    cluster = None
    if any(n.startswith(("surge-ray", "ray-llm")) for n in names):
        cluster = start_cluster(args.workers)
    try:
        for repeat in range(args.repeats):
            for name in names:
                if name == "overhead":
                    costs.append(overhead())
                    continue
                started = time.time()
                load = os.getloadavg()[0]
                row = run_case(args, wls, name)
                if row is None:
                    continue
                row.update(
                    repeat=repeat, started_at=started, loadavg_1m=[load, os.getloadavg()[0]],
                    requests=args.requests, rpm=args.rpm, tpm=wls[kind_of(name)].tpm,
                    burst_s=args.burst, workers=args.workers, concurrency=args.concurrency,
                    blocks=wls[kind_of(name)].blocks, latency=args.latency,
                )  # fmt: skip
                rows.append(row)
                brief = {k: v for k, v in row.items() if k not in ("timeline", "by_status")}
                print(json.dumps(brief), flush=True)
                if output is not None:
                    output.write(json.dumps(row) + "\n")
                    output.flush()
    finally:
        if output is not None:
            output.close()
        if cluster is not None:
            import ray

            ray.shutdown()
            cluster.shutdown()
    print()
    print_table(rows, names)
    if costs:
        print(f"\n{'limiter':<28}{'µs/call':>24}{'exchanges/1k calls':>20}")
        for i, (label, _, _) in enumerate(costs[0]):
            micro = spread([c[i][1] for c in costs], ".1f")
            print(f"{label:<28}{micro:>24}{statistics.median(c[i][2] for c in costs):>20.1f}")
    print(f"\n{COMMAND}")


if __name__ == "__main__":
    main()
