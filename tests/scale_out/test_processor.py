"""surge.ray.Processor on a local multi-node Ray cluster against the simulator.

One cluster (3 nodes of 1 CPU, `ray.cluster_utils.Cluster`) serves the whole module:
starting it costs ~10 s on a small machine, so the tests are few and share it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data", reason="surge.ray needs ray[data] (pip install 'surge[ray]')")

import surge.ray  # noqa: E402
import surge.sim  # noqa: E402

SECRET = "sk-test-4f9a1c0e77b2d3a8-secret"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    local = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    for _ in range(2):
        local.add_node(num_cpus=1)
    ray.init(address=local.address, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield local
    ray.shutdown()
    local.shutdown()


def processor(server: Any, **kw: Any) -> surge.ray.Processor:
    options: dict[str, Any] = {
        "base_url": server.url,
        "model": "sim-small",
        "workers": 3,
        "concurrency_per_worker": 16,
        "num_cpus": 0.25,
        "key": f"test-{server.url}",
    }
    options.update(kw)
    return surge.ray.Processor(**options)


def test_an_unreachable_ray_address_or_no_ray_fails_at_once_with_a_hint() -> None:
    import time

    from surge.ray._processor import connect

    start = time.monotonic()
    with pytest.raises(ConnectionError, match="HINT: start one there"):
        connect("127.0.0.1:1")
    with pytest.raises(ConnectionError, match="HINT"):
        connect("ray://127.0.0.1:1")
    assert time.monotonic() - start < 10
    if not ray.is_initialized():
        with pytest.raises(RuntimeError, match=r"HINT: call ray\.init"):
            surge.Limiter(rpm=10, shared="ray", key="k")


def test_three_workers_on_three_nodes_keep_one_limit(cluster: Any) -> None:
    rows = 500
    rpm, burst = 3000, 50  # 50 requests/s; the simulator allows a 1 s burst
    with surge.sim.serve_in_thread(rpm=rpm, burst_seconds=1.0) as server:
        ds = ray.data.from_items(
            [{"prompt": f"question {i}", "n": i} for i in range(rows)], override_num_blocks=6
        )
        out = processor(server, rpm=rpm)(ds).take_all()
        stats = server.stats()
    assert sorted(r["n"] for r in out) == list(range(rows))  # every row once
    assert all(r["error"] is None and r["text"] for r in out)
    assert all(r["usage"]["output_tokens"] > 0 and r["attempts"] >= 1 for r in out)
    assert {r["prompt"] for r in out} == {f"question {i}" for i in range(rows)}  # columns kept
    limited = stats["by_status"].get("429", 0)
    assert limited <= 0.01 * stats["requests"], stats["by_status"]
    assert stats["requests"] - limited == rows
    started = [second["started"] for second in stats["timeline"]]
    for window in (1, 3):
        for i in range(len(started)):
            # per-second buckets: a window of w seconds spans at most w + 1 of them
            assert sum(started[i : i + window]) <= burst + rpm / 60 * (window + 1)


def test_a_failed_row_is_a_row_with_its_error_and_the_key_stays_secret(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        if row["n"] == 3:
            raise RuntimeError("cannot template row 3")
        text = row["question"] if row["n"] != 4 else row["missing_column"]
        return {"messages": [{"role": "user", "content": text}], "max_tokens": 20}

    items = [{"question": f"q{i}", "n": i} for i in range(8)]
    items[5]["question"] = "SURGE_POISON"  # the simulator answers 400
    with surge.sim.serve_in_thread(api_keys=frozenset({SECRET})) as server:
        out = processor(server, preprocess=preprocess, workers=2)(
            ray.data.from_items(items)
        ).take_all()
    by_n = {r["n"]: r for r in out}
    assert sorted(by_n) == list(range(8))
    assert "cannot template row 3" in by_n[3]["error"]
    assert "'missing_column'" in by_n[4]["error"] and "HINT" in by_n[4]["error"]
    assert by_n[5]["error"].startswith("bad_request") and by_n[5]["response"] is None
    for n in (0, 1, 2, 6, 7):  # the key reached the workers: the simulator accepted it
        assert by_n[n]["error"] is None and by_n[n]["text"]
    assert SECRET not in json.dumps(out, default=str)
    logs = Path(cluster.head_node.get_session_dir_path()) / "logs"
    for path in logs.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path


def test_rows_without_a_prompt_say_which_columns_they_need(cluster: Any) -> None:
    with surge.sim.serve_in_thread() as server:
        out = processor(server, workers=1)(ray.data.from_items([{"question": "hi"}])).take_all()
    assert "'prompt', 'messages' or 'body'" in out[0]["error"]
    assert "question" in out[0]["error"] and "HINT" in out[0]["error"]


def test_a_rerun_into_the_same_output_asks_only_what_was_not_answered(
    cluster: Any, tmp_path: Path
) -> None:
    items = [{"prompt": f"question {i}"} for i in range(30)]
    answers = str(tmp_path / "answers")
    with surge.sim.serve_in_thread() as server:
        first = processor(server, workers=2)
        first(ray.data.from_items(items[:12])).write_parquet(answers)  # "crashed" at 12
        assert server.stats()["requests"] == 12
        again = processor(server, workers=2)
        again(ray.data.from_items(items), resume_from=answers).write_parquet(answers)
        assert server.stats()["requests"] == 30  # the 18 left, not 30 more
        again(ray.data.from_items(items), resume_from=answers).write_parquet(answers)
        assert server.stats()["requests"] == 30
    table = ray.data.read_parquet(answers).to_pandas()
    assert sorted(table["prompt"]) == sorted(i["prompt"] for i in items)
    assert table["custom_id"].is_unique


def test_a_worker_killed_mid_run_loses_no_row_and_duplicates_none(
    cluster: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "killed"

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        if row["n"] == 150 and not marker.exists():
            marker.touch()
            os._exit(1)  # the worker process dies mid-batch, its leases with it
        return {"messages": [{"role": "user", "content": row["prompt"]}], "max_tokens": 16}

    rows = 300
    with surge.sim.serve_in_thread(rpm=6000, burst_seconds=1.0) as server:
        ds = ray.data.from_items(
            [{"prompt": f"question {i}", "n": i} for i in range(rows)], override_num_blocks=6
        )
        out = processor(server, rpm=6000, preprocess=preprocess, batch_size=16)(ds).take_all()
        stats = server.stats()
    assert marker.exists()
    assert sorted(r["n"] for r in out) == list(range(rows))
    assert all(r["error"] is None for r in out)
    # Asked again: only rows of the batches the dead worker had in progress.
    assert rows <= stats["by_status"]["200"] <= rows + 4 * 4 * 16


def wait_until_every_cpu_is_free(seconds: float = 60.0) -> None:
    """The README's workers take a whole CPU each (Ray Data's default): an earlier test's
    actor still being torn down on each node (a fraction of its CPU) would leave them
    unschedulable, and the Dataset would wait for them without end."""
    import time

    total = ray.cluster_resources().get("CPU", 0)
    deadline = time.monotonic() + seconds
    while ray.available_resources().get("CPU", 0) < total:
        if time.monotonic() > deadline:
            from ray.util.state import list_actors

            alive = list_actors(filters=[("state", "=", "ALIVE")])
            pytest.fail(f"CPUs still held after {seconds:.0f} s by {alive}")
        time.sleep(0.2)


def test_the_readme_example_runs_as_written(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    wait_until_every_cpu_is_free()

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Scale out\n") :]
    section = section[: section.index("\n## ", 1)]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[0]
    answers = tmp_path / "answers"
    monkeypatch.setattr(ray, "init", lambda *a, **k: None)  # the cluster is up already
    exec(compile(code.replace("/tmp/answers", str(answers)), "README.md", "exec"), {})
    table = ray.data.read_parquet(str(answers)).to_pandas()
    assert len(table) == 300 and table["error"].isna().all()
    assert table["text"].str.len().min() > 0


def test_anthropic_messages_and_embeddings_rows(cluster: Any) -> None:
    with surge.sim.serve_in_thread() as server:
        claude = processor(server, provider="anthropic", model="claude-3-5-haiku-latest")
        messages = claude(ray.data.from_items([{"prompt": "hello"}, {"prompt": "bye"}])).take_all()
        embed = processor(
            server,
            endpoint="embeddings",
            model="sim-embed",
            postprocess=lambda row: {"dims": len(row["response"]["data"][0]["embedding"])},
        )
        vectors = embed(ray.data.from_items([{"prompt": "a"}, {"prompt": "b"}])).take_all()
    assert all(r["error"] is None and r["text"] for r in messages)
    assert all(r["usage"]["input_tokens"] > 0 for r in messages)
    for row in vectors:
        assert row["error"] is None and row["text"] is None
        assert row["dims"] == len(json.loads(row["response"])["data"][0]["embedding"]) > 0
