"""`surge run` end to end against the simulator, in process and as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.jobs.conftest import read_jsonl, write_batch

import surge.sim
from surge.jobs import JobSettings, run_job

SECRET = "sk-live-THIS-MUST-NEVER-LEAK-42"


def run(settings: JobSettings) -> Any:
    return asyncio.run(run_job(settings))


def settings_for(
    server: surge.sim.SimServer, tmp_path: Path, source: Path, **changes: Any
) -> JobSettings:
    values: dict[str, Any] = {
        "input": str(source),
        "output": str(tmp_path / "out.jsonl"),
        "base_url": server.url,
        "concurrency": 16,
        "max_retries": 4,
        "timeout": 5.0,
    }
    values.update(changes)
    return JobSettings(**values)


def check_outputs_match_inputs(output: Path, n: int) -> list[dict[str, Any]]:
    lines = read_jsonl(output)
    assert [line["custom_id"] for line in lines] == [f"req-{i}" for i in range(n)], (
        "one line per input, in order"
    )
    for i, line in enumerate(lines):
        if line["error"] is None:
            text = line["response"]["body"]["choices"][0]["message"]["content"]
            request_text = f"Question {i}: name a colour."
            expected = surge.sim.expected_reply(
                {"messages": [{"role": "user", "content": request_text}], "max_tokens": 24}
            )
            assert text == expected.text, f"line {i} got another input's answer"
    return lines


def test_batch_job_every_output_line_belongs_to_its_input(
    sim: surge.sim.SimServer, tmp_path: Path
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 60)
    report = run(settings_for(sim, tmp_path, source))
    assert report.outcome == "complete" and report.exit_code == 0
    assert report.summary.done == 60 and report.summary.cost > 0
    check_outputs_match_inputs(tmp_path / "out.jsonl", 60)
    assert (tmp_path / "out.jsonl.errors.jsonl").read_text() == ""


def test_a_rerun_of_a_finished_job_sends_nothing(sim: surge.sim.SimServer, tmp_path: Path) -> None:
    source = write_batch(tmp_path / "in.jsonl", 20)
    run(settings_for(sim, tmp_path, source, cache=False))
    before = sim.stats()["requests"]
    report = run(settings_for(sim, tmp_path, source, cache=False))
    assert sim.stats()["requests"] == before
    assert report.summary.done == 20


def test_identical_requests_are_answered_from_the_cache_across_jobs(
    sim: surge.sim.SimServer, tmp_path: Path
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 10)
    run(settings_for(sim, tmp_path, source))
    before = sim.stats()["requests"]
    report = run(settings_for(sim, tmp_path, source, output=str(tmp_path / "second.jsonl")))
    assert sim.stats()["requests"] == before
    assert report.summary.cached == 10
    first, second = read_jsonl(tmp_path / "out.jsonl"), read_jsonl(tmp_path / "second.jsonl")
    assert [x["response"]["body"] for x in first] == [x["response"]["body"] for x in second]


def test_bad_requests_are_sent_once_and_recorded(sim: surge.sim.SimServer, tmp_path: Path) -> None:
    source = write_batch(tmp_path / "in.jsonl", 10, poison={3, 7})
    report = run(settings_for(sim, tmp_path, source))
    assert report.summary.failed == 2 and report.summary.failed_by_reason == {"bad_request": 2}
    assert report.exit_code == 1
    assert sim.stats()["requests"] == 10
    errors = read_jsonl(tmp_path / "out.jsonl.errors.jsonl")
    assert [(e["custom_id"], e["reason"], e["attempts"]) for e in errors] == [
        ("req-3", "bad_request", 1),
        ("req-7", "bad_request", 1),
    ]
    lines = check_outputs_match_inputs(tmp_path / "out.jsonl", 10)
    assert lines[3]["response"]["status_code"] == 400 and lines[3]["error"]["code"] == "bad_request"


def test_every_fault_kind_ends_in_success_or_a_recorded_failure(tmp_path: Path) -> None:
    faults = surge.sim.Faults(
        error_500=0.05,
        error_502=0.05,
        error_503=0.05,
        hang=0.03,
        reset=0.05,
        malformed=0.05,
        slow=0.03,
        slow_seconds=0.2,
    )
    with surge.sim.serve_in_thread(profile="fast", faults=faults, seed=11) as server:
        source = write_batch(tmp_path / "in.jsonl", 150)
        report = run(
            settings_for(server, tmp_path, source, timeout=1.0, max_retries=6, concurrency=32)
        )
        stats = server.stats()
    assert report.summary.done + report.summary.failed == 150 and report.summary.pending == 0
    assert set(stats["faults"]) >= {"500", "502", "503", "hang", "reset", "malformed", "slow"}
    check_outputs_match_inputs(tmp_path / "out.jsonl", 150)
    for error in read_jsonl(tmp_path / "out.jsonl.errors.jsonl"):
        assert error["reason"] in {
            "server_error",
            "timeout",
            "transport_error",
            "malformed_response",
        }


def test_budget_stops_dispatch_before_it_is_passed(
    sim: surge.sim.SimServer, tmp_path: Path
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 200)
    from surge.jobs.pricing import PriceTable

    price = PriceTable.default().lookup("sim-small")
    assert price is not None
    per_request_bound = (20 * price.input_per_million + 24 * price.output_per_million) / 1e6
    budget = per_request_bound * 50
    report = run(settings_for(sim, tmp_path, source, max_cost=budget, concurrency=4))
    assert report.outcome == "stopped" and report.stopped_reason == "max_cost"
    assert report.summary.cost <= budget
    assert 0 < report.summary.done < 200 and report.summary.pending == 200 - report.summary.done
    assert len(read_jsonl(tmp_path / "out.jsonl")) == report.summary.done


def test_dry_run_sends_nothing(sim: surge.sim.SimServer, tmp_path: Path) -> None:
    source = write_batch(tmp_path / "in.jsonl", 30)
    report = run(settings_for(sim, tmp_path, source, dry_run=True))
    assert report.outcome == "dry_run" and sim.stats()["requests"] == 0
    assert report.estimate is not None and report.estimate.output_tokens == 30 * 24
    assert report.estimate.cost_ceiling is not None and report.estimate.cost_ceiling > 0


def test_embeddings_are_packed_and_given_back_per_item(
    sim: surge.sim.SimServer, tmp_path: Path
) -> None:
    source = tmp_path / "texts.jsonl"
    texts = [f"document number {i}" for i in range(10)]
    source.write_text(
        "".join(json.dumps({"id": f"d{i}", "input": t}) + "\n" for i, t in enumerate(texts))
    )
    report = run(
        settings_for(
            sim, tmp_path, source, endpoint="/v1/embeddings", model="sim-embed", embed_batch=4
        )
    )
    assert report.summary.done == 10
    assert sim.stats()["requests"] == 3
    for text, line in zip(texts, read_jsonl(tmp_path / "out.jsonl"), strict=True):
        vector = line["response"]["body"]["data"][0]["embedding"]
        assert vector == pytest.approx(surge.sim.embedding_vector(text, len(vector)))


def _cli(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "surge.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs,
    )  # fmt: skip


def _done_count(journal: Path) -> int:
    if not journal.exists():
        return 0
    try:
        with sqlite3.connect(journal, timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM items WHERE state = 'done'").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_sigkill_mid_job_loses_nothing_and_resends_little(tmp_path: Path) -> None:
    n, concurrency = 200, 8
    with surge.sim.serve_in_thread(profile="fast", rpm=3000, burst_seconds=1.0) as server:
        source = write_batch(tmp_path / "in.jsonl", n)
        output = tmp_path / "out.jsonl"
        args = [
            "run", str(source), "-o", str(output), "--base-url", server.url,
            "--concurrency", str(concurrency), "--no-cache", "--no-progress",
        ]  # fmt: skip
        process = _cli(*args)
        deadline = time.monotonic() + 30
        while _done_count(Path(f"{output}.journal")) < n // 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert 0 < _done_count(Path(f"{output}.journal")) < n
        sent_before = server.stats()["requests"]
        rerun = _cli(*args)
        _out, err = rerun.communicate(timeout=60)
        assert rerun.returncode == 0, err
        stats = server.stats()
    check_outputs_match_inputs(output, n)
    # The journal commits what each event-loop tick received at the end of that tick, so
    # a SIGKILL loses only what was in flight: at most `concurrency` requests are sent
    # (and paid) twice. A 429 was refused, not answered: it is neither.
    resent = stats["requests"] - stats["by_status"].get("429", 0) - n
    paid_twice = stats["by_status"].get("200", 0) - n
    assert 0 <= paid_twice <= resent <= concurrency, (paid_twice, resent, stats["by_status"])
    assert sent_before >= n // 2


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path: Path) -> None:
    n = 120
    with surge.sim.serve_in_thread(profile="fast", rpm=1200, burst_seconds=1.0) as server:
        source = write_batch(tmp_path / "in.jsonl", n)
        output = tmp_path / "out.jsonl"
        args = [
            "run",
            str(source),
            "-o",
            str(output),
            "--base-url",
            server.url,
            "--no-cache",
            "--no-progress",
        ]
        process = _cli(*args)
        deadline = time.monotonic() + 30
        while _done_count(Path(f"{output}.journal")) < 30 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 130, err
        assert "Resume with the same command" in err
        partial = read_jsonl(output)
        assert 30 <= len(partial) < n
        rerun = _cli(*args)
        _out, err = rerun.communicate(timeout=60)
        assert rerun.returncode == 0, err
        assert server.stats()["by_status"]["200"] == n, "nothing finished was paid for twice"
    check_outputs_match_inputs(output, n)


def test_bad_input_stops_before_the_first_request(sim: surge.sim.SimServer, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    line = {
        "custom_id": "same",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]},
    }
    source.write_text(json.dumps(line) + "\n" + json.dumps(line) + "\n")
    process = _cli("run", str(source), "-o", str(tmp_path / "out.jsonl"), "--base-url", sim.url)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "duplicate custom_id" in err and "lines 1, 2" in err
    assert sim.stats()["requests"] == 0
    missing = _cli("run", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl"))
    _, err = missing.communicate(timeout=60)
    assert missing.returncode == 2 and "nope.jsonl" in err


def test_malformed_lines_go_to_the_errors_file_and_the_rest_runs(
    sim: surge.sim.SimServer, tmp_path: Path
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 5)
    with source.open("a") as handle:
        handle.write("{not json\n")
    report = run(settings_for(sim, tmp_path, source))
    assert report.summary.done == 5 and report.summary.invalid == 1
    [error] = read_jsonl(tmp_path / "out.jsonl.errors.jsonl")
    assert error["reason"] == "invalid_input" and f"{source}:6" in error["message"]


def test_the_api_key_appears_in_nothing_the_job_writes_or_prints(tmp_path: Path) -> None:
    with surge.sim.serve_in_thread(profile="fast", api_keys=frozenset({"another-key"})) as server:
        source = write_batch(tmp_path / "in.jsonl", 5)
        env = {**os.environ, "MY_KEY": SECRET}
        process = _cli(
            "run", str(source), "-o", str(tmp_path / "out.jsonl"), "--base-url", server.url,
            "--api-key-env", "MY_KEY", "--json-summary", env=env,
        )  # fmt: skip
        out, err = process.communicate(timeout=60)
    assert process.returncode == 1  # the key was refused: 401 stops the job
    summary = json.loads(out)
    assert summary["outcome"] == "stopped" and summary["pending"] == 5
    assert "the key in MY_KEY was refused" in summary["fault"]
    assert SECRET not in out and SECRET not in err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"key leaked into {path}"
            assert SECRET[:12].encode() not in path.read_bytes(), f"key prefix leaked into {path}"


def test_status_summarises_a_job(sim: surge.sim.SimServer, tmp_path: Path) -> None:
    source = write_batch(tmp_path / "in.jsonl", 6, poison={2})
    run(settings_for(sim, tmp_path, source))
    process = _cli("status", str(tmp_path / "out.jsonl"), "--json")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    summary = json.loads(out)
    assert (summary["done"], summary["failed"], summary["pending"]) == (5, 1, 0)
    assert summary["failed_by_reason"] == {"bad_request": 1}


def test_csv_in_parquet_out(sim: surge.sim.SimServer, tmp_path: Path) -> None:
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    source = tmp_path / "docs.csv"
    source.write_text("doc_id,text\n" + "".join(f"d{i},text number {i}\n" for i in range(8)))
    output = tmp_path / "out.parquet"
    report = run(
        settings_for(
            sim, tmp_path, source, output=str(output), template="Summarize: {text}",
            id_column="doc_id", model="sim-small", defaults={"max_tokens": 12},
        )
    )  # fmt: skip
    assert report.summary.done == 8
    table = pyarrow_parquet.read_table(output).to_pylist()
    assert [row["custom_id"] for row in table] == [f"d{i}" for i in range(8)]
    for i, row in enumerate(table):
        request = {
            "messages": [{"role": "user", "content": f"Summarize: text number {i}"}],
            "max_tokens": 12,
        }
        answer = json.loads(row["body"])["choices"][0]["message"]["content"]
        assert answer == surge.sim.expected_reply(request).text


def test_completion_order_and_progress_log_lines(tmp_path: Path) -> None:
    import io

    from surge.jobs.progress import ProgressDisplay

    with surge.sim.serve_in_thread(profile="typical", seed=5) as server:
        source = write_batch(tmp_path / "in.jsonl", 12)
        stream = io.StringIO()
        display = ProgressDisplay(enabled=True, stream=stream, interval=0.2)
        settings = settings_for(server, tmp_path, source, order="completion", concurrency=12)
        asyncio.run(run_job(settings, display=display))
    finished = [x["custom_id"] for x in read_jsonl(tmp_path / "out.jsonl")]
    assert sorted(finished) == sorted(f"req-{i}" for i in range(12))
    assert finished != [f"req-{i}" for i in range(12)], "completion order differs from input order"
    log = stream.getvalue()
    assert "[surge]" in log and "req/s" in log and "12/12 finished" in log


def test_anthropic_output_token_limit_is_respected(tmp_path: Path) -> None:
    """Anthropic limits output tokens apart (OTPM, charged by max_tokens at the start):
    the job reserves each request's max_tokens in a bucket learned from the headers."""
    with surge.sim.serve_in_thread(
        profile="fast", rpm=6000, otpm=6000, burst_seconds=1.0
    ) as server:
        source = write_batch(tmp_path / "in.jsonl", 30)
        # 30 requests x 24 max_tokens at 100 output tokens/s, 100 at once: ~6.2 s at best.
        report = run(
            settings_for(
                server,
                tmp_path,
                source,
                provider="anthropic",
                base_url=server.base_url + "/v1",
                concurrency=8,
            )
        )
        stats = server.stats()
    assert report.summary.done == 30
    rejected = stats["by_status"].get("429", 0)
    assert rejected <= 8, f"{rejected} requests refused for output tokens"
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert all(line["response"]["body"]["type"] == "message" for line in lines)


def test_limiter_reserves_output_tokens_per_dimension() -> None:
    from surge.testing import run as run_virtual

    limiter = surge.Limiter(otpm=600, burst=5.0)  # 10 output tokens/s, 50 at once

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        times = []
        for _ in range(4):
            permit = await limiter.acquire({"input_tokens": 5, "output_tokens": 20})
            times.append(loop.time())
            limiter.release(permit, usage_tokens=25, input_tokens=5, output_tokens=20)
        return times

    # 50 in the bucket: two calls at once, then one every 2 s (20 tokens at 10/s).
    assert run_virtual(main()) == pytest.approx([0.0, 0.0, 1.0, 3.0])


def test_told_no_limits_the_job_learns_them_before_bursting(tmp_path: Path) -> None:
    # The server admits 20 at once and 20/s; the job has concurrency 50 and no --rpm.
    with surge.sim.serve_in_thread(profile="fast", rpm=1200, burst_seconds=1.0) as server:
        source = write_batch(tmp_path / "in.jsonl", 80)
        report = run(settings_for(server, tmp_path, source, concurrency=50, cache=False))
        stats = server.stats()
    assert report.summary.done == 80
    rejected = stats["by_status"].get("429", 0)
    assert rejected <= 3, f"{rejected} requests refused: the first wave was not held back"


# -- --max-failures ------------------------------------------------------------------------


def test_max_failures_does_not_count_the_429s_put_back_in_the_queue(tmp_path: Path) -> None:
    # As in test_anthropic_job: the user claims 6,000 RPM, the server allows 600, and
    # with no retries a refused item goes to the back of the queue. It is not failed,
    # so --max-failures 1 must not stop the job.
    with surge.sim.serve_in_thread(profile="fast", rpm=600, burst_seconds=0.2) as server:
        source = write_batch(tmp_path / "in.jsonl", 24)
        report = run(
            settings_for(server, tmp_path, source, rpm=6000, max_retries=0, max_failures=1)
        )
        stats = server.stats()
    assert stats["by_status"].get("429", 0) > 0, "the test must provoke 429s"
    assert report.outcome == "complete" and report.stopped_reason is None
    assert report.summary.done == 24 and report.summary.failed == 0


def test_max_failures_stops_once_that_many_items_are_recorded_failed(
    sim: surge.sim.SimServer, tmp_path: Path
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 20, poison={2, 5, 9, 14})
    report = run(settings_for(sim, tmp_path, source, concurrency=1, max_failures=2))
    assert report.outcome == "stopped" and report.stopped_reason == "max_failures"
    # req-0..5 in order; dispatch stops at the second failure, what is in flight (one
    # request at concurrency 1) still finishes.
    assert report.summary.failed == 2 and report.summary.done in (4, 5)
    assert report.summary.pending == 20 - 2 - report.summary.done
    # The rerun counts its own failures: two more, then it stops again.
    report = run(settings_for(sim, tmp_path, source, concurrency=1, max_failures=2))
    assert report.outcome == "stopped" and report.summary.failed == 4
    assert report.summary.pending == 20 - 4 - report.summary.done > 0
    report = run(settings_for(sim, tmp_path, source, concurrency=1, max_failures=2))
    assert report.outcome == "complete" and report.summary.done == 16


@pytest.mark.parametrize("value", [0, -1])
def test_max_failures_below_one_is_refused_at_the_door(
    sim: surge.sim.SimServer, tmp_path: Path, value: int
) -> None:
    from surge.jobs import JobInputError

    source = write_batch(tmp_path / "in.jsonl", 2)
    with pytest.raises(JobInputError, match=r"--max-failures must be at least 1.*HINT"):
        run(settings_for(sim, tmp_path, source, max_failures=value))
    assert not list(tmp_path.glob("out.jsonl*")) and sim.stats()["requests"] == 0
