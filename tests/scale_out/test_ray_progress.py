"""One progress line for a whole cluster job: `surge.ray.Processor` and `surge run --ray`.

One local Ray (2 CPUs) serves the module; the simulator runs on a thread of this process.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data", reason="surge.ray needs ray[data] (pip install 'surge[ray]')")

import surge.ray  # noqa: E402
import surge.sim  # noqa: E402
from surge.jobs.progress import ProgressDisplay, Snapshot  # noqa: E402
from surge.ray._progress import ClusterDisplay, cluster_line  # noqa: E402


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def snapshot(**changes: Any) -> Snapshot:
    values: dict[str, Any] = {
        "done": 1234, "total": 10_000, "failed": 6, "in_flight": 0, "retries": 0,
        "rate_limited": 3, "tokens": 246_800, "cost": None, "elapsed": 24.68,
    }  # fmt: skip
    return Snapshot(**{**values, **changes})


def test_the_cluster_line_at_80_columns_shows_rows_done_of_total_and_eta() -> None:
    screen = io.StringIO()
    console = Console(file=screen, width=80, record=True, force_terminal=True, color_system=None)
    with ClusterDisplay(console=console) as display:
        display.update(snapshot())
    # The live display erases its line before each frame: the last frame is what stays.
    line = screen.getvalue().split("\x1b[2K")[-1].replace("\x1b[?25h", "").rstrip("\n")
    assert "\n" not in line and len(line) <= 80, repr(line)
    assert "1,240/10,000" in line  # answered and failed rows both finished
    assert "ETA 2m55s" in line  # 8,760 rows left at 50.0 rows/s
    assert "429s 3 failed 6" in line and "50.0 req/s" in line and "10,000 tok/s" in line


def test_the_log_line_has_rates_and_says_so_when_the_total_is_unknown() -> None:
    line = cluster_line(snapshot())
    assert line.startswith("1,240/10,000 rows | 50.0 req/s | 10,000 tok/s | 429s 3")
    assert line.endswith("failed 6 | ETA 2m55s")
    assert cluster_line(snapshot(total=0)).endswith("ETA ?")
    assert cluster_line(snapshot(total=0)).startswith("1,240/? rows")


def test_processor_workers_counts_add_up_to_the_rows_in_one_line(
    local_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = 90

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        if row["n"] % 30 == 7:
            raise ValueError("a bad row")
        return {"messages": [{"role": "user", "content": f"Q{row['n']}"}], "max_tokens": 20}

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        if row["n"] % 30 == 11:  # answered and paid for, then failed here: not "done"
            raise KeyError("choices")
        return {"answered": True}

    with surge.sim.serve_in_thread(rpm=6000) as server:
        processor = surge.ray.Processor(
            base_url=server.url, model="sim-small", workers=2, concurrency_per_worker=8,
            batch_size=10, num_cpus=0.25, preprocess=preprocess, postprocess=postprocess, progress=True,
            key=f"progress-{server.url}",
        )  # fmt: skip
        ds = ray.data.from_items([{"n": i} for i in range(rows)], override_num_blocks=3)
        out = processor(ds).take_all()
        watcher = processor._watcher
        assert watcher is not None and watcher.total == rows
        assert watcher.join(timeout=30), "the display never saw every row"
        stats = server.stats()
    counts = watcher.counts
    assert len(out) == rows
    assert counts.done == sum(r["error"] is None for r in out) == rows - 6
    assert counts.failed == 6
    assert sum(str(r["error"]).startswith("postprocess_error: KeyError") for r in out) == 3
    assert counts.tokens == sum(  # tokens paid for, postprocess error or not
        r["usage"]["input_tokens"] + r["usage"]["output_tokens"]
        for r in out
        if r["usage"]["input_tokens"] is not None
    )
    assert counts.tokens > 0
    assert counts.rate_limited == stats["by_status"].get("429", 0)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[surge")]
    assert lines and all(line.startswith("[surge.ray] ") for line in lines)
    assert lines[-1].startswith(f"[surge.ray] {rows}/{rows} rows")  # one line, all workers


def test_processor_progress_false_starts_no_actor_and_a_filter_hides_the_total(
    local_ray: None, tmp_path: Path
) -> None:
    with surge.sim.serve_in_thread() as server:
        quiet = surge.ray.Processor(base_url=server.url, model="sim-small", progress=False)
        quiet(ray.data.from_items([{"prompt": "hi"}]))
        assert quiet._watcher is None
        first = surge.ray.Processor(base_url=server.url, model="sim-small", progress=False)
        first(ray.data.from_items([{"prompt": "a"}])).write_parquet(str(tmp_path / "out"))
        resumed = surge.ray.Processor(
            base_url=server.url, model="sim-small", progress=True, workers=1
        )
        items = ray.data.from_items([{"prompt": "a"}, {"prompt": "b"}])
        assert len(resumed(items, resume_from=str(tmp_path / "out")).take_all()) == 1
        assert resumed._watcher is not None and resumed._watcher.total is None
        resumed._watcher.stop()
        assert resumed._watcher.join(timeout=5)


def test_surge_run_ray_has_one_progress_line_fed_by_the_job_not_the_workers(
    local_ray: None, tmp_path: Path
) -> None:
    from surge.jobs.runner import JobSettings, run_job

    source = tmp_path / "in.jsonl"
    with source.open("w") as handle:
        for i in range(30):
            body = {"model": "sim-small", "messages": [{"role": "user", "content": f"Q{i}"}]}
            line = {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions"}
            handle.write(json.dumps({**line, "body": body}) + "\n")
    log = io.StringIO()
    with surge.sim.serve_in_thread() as server:
        settings = JobSettings(
            input=str(source), output=str(tmp_path / "out.jsonl"), base_url=server.url,
            ray=True, ray_workers=2, cache=False,
        )  # fmt: skip
        report = asyncio.run(run_job(settings, display=ProgressDisplay(stream=log, interval=0.0)))
        assert server.stats()["by_status"] == {"200": 30}
    assert report.summary.done == 30
    lines = log.getvalue().splitlines()
    assert lines and all(line.startswith("[surge] ") for line in lines), lines
    assert "30/30 finished" in lines[-1], lines


def test_the_ledger_outlives_the_job_that_made_it(local_ray: None) -> None:
    # A ledger owned by the job that made it died when that job let go of it, and the
    # next Processor in the same driver could find it by name while it was dying, then
    # hang (2 runs in 14 after a failed Ray Data job). The cluster owns it now.
    import gc
    import time

    from surge.ray._actor_limiter import ACTOR_NAME, NAMESPACE

    with surge.sim.serve_in_thread() as server:
        processor = surge.ray.Processor(
            base_url=server.url, model="gpt-4o-mini", rpm=6000, workers=1, progress=False
        )
        rows = processor(ray.data.from_items([{"prompt": f"q{i}"} for i in range(4)])).take_all()
        assert [row["error"] for row in rows] == [None] * 4
    ledger = ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
    del processor, rows
    gc.collect()
    for _ in range(10):  # the owner's release of an actor is asynchronous: give it time
        time.sleep(0.2)
        ray.get(ledger.state.remote("none"), timeout=10)  # ActorDiedError once it is gone
    # The next job in this driver finds the same ledger, and it answers.
    with surge.sim.serve_in_thread() as server:
        again = surge.ray.Processor(
            base_url=server.url, model="gpt-4o-mini", rpm=6000, workers=1, progress=False
        )
        rows = again(ray.data.from_items([{"prompt": "q"}])).take_all()
        assert rows[0]["error"] is None
    assert ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)._actor_id == ledger._actor_id


# How long a call may wait for a replacement ledger: "not for ever", with room for Ray to
# start the new actor's worker process. That took 0.3 s here on a quiet machine, 13 s
# with two busy loops on the two cores, and over 30 s once in CI.
REPLACEMENT_WAIT = 120


def test_a_dead_ledger_actor_is_replaced_and_the_limiter_goes_on(local_ray: None) -> None:
    # Someone killed the ledger (`ray.kill`, or its node died): the workers must not wait
    # on it for ever.
    from surge.ray._actor_limiter import RayStore, ledger_actor

    dying = ledger_actor()
    ray.kill(dying, no_restart=True)

    async def main() -> float:
        limiter = surge.Limiter(rpm=600, shared=RayStore(dying), key="dead-ledger")
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(3):
            limiter.release(await asyncio.wait_for(limiter.acquire(), REPLACEMENT_WAIT))
        await limiter.aclose()
        return loop.time() - start

    assert asyncio.run(main()) < REPLACEMENT_WAIT


class _SilentLedger:
    def exchange(self, key: str, request: Any) -> Any:
        import time

        time.sleep(3600)


def test_a_ledger_that_does_not_answer_is_looked_up_again(
    local_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from surge.ray import _actor_limiter

    monkeypatch.setattr(_actor_limiter, "REPLY_TIMEOUT", 0.5)
    silent = ray.remote(num_cpus=0)(_SilentLedger).remote()

    async def main() -> None:
        store = _actor_limiter.RayStore(silent)
        limiter = surge.Limiter(rpm=600, shared=store, key="silent-ledger")
        for _ in range(3):
            limiter.release(await asyncio.wait_for(limiter.acquire(), REPLACEMENT_WAIT))
        await limiter.aclose()
        assert store._actor._actor_id != silent._actor_id  # the cluster's, by name

    asyncio.run(main())
    ray.kill(silent)
