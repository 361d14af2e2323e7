"""Job-level faults stop `surge run` instead of burning every item: a missing or refused
key, a spent billing quota, a base URL where nothing listens. The unfinished items stay
pending, the job says what to fix (never the key), and the same command, rerun once
it is fixed, sends exactly those items."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from tests.jobs.conftest import read_jsonl, write_batch
from typer.testing import CliRunner

import surge.sim
from surge.cli import app
from surge.jobs import JobInputError, JobReport, JobSettings, run_job

KEY_ENV = "SURGE_TEST_FAULT_KEY"
RIGHT_KEY = "sk-right-0123456789abcdef"
WRONG_KEY = "sk-wrong-9876543210fedcba"
N = 40


def run(settings: JobSettings) -> JobReport:
    return asyncio.run(run_job(settings))


def job(tmp_path: Path, base_url: str, **changes: Any) -> JobSettings:
    source = tmp_path / "in.jsonl"
    if not source.exists():
        write_batch(source, N)
    values: dict[str, Any] = {
        "input": str(source),
        "output": str(tmp_path / "out.jsonl"),
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "concurrency": 8,
        "max_retries": 3,
        "timeout": 5.0,
        "cache": False,
    }
    values.update(changes)
    return JobSettings(**values)


def assert_stopped_with_everything_pending(report: JobReport) -> None:
    assert report.outcome == "stopped" and report.stopped_reason == "job_fault"
    assert report.summary.pending == N and report.summary.failed == 0
    assert report.summary.done == 0
    assert report.exit_code != 0
    assert report.fault is not None and "HINT:" in report.fault


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unset_key_stops_at_the_first_401_and_the_rerun_sends_every_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with surge.sim.serve_in_thread(profile="fast", api_keys=frozenset({RIGHT_KEY})) as server:
        report = run(job(tmp_path, server.url))
        refused = server.stats()["requests"]
        assert_stopped_with_everything_pending(report)
        assert refused <= 8, f"{refused} requests sent after the key was refused"
        assert report.fault is not None and f"{KEY_ENV} is not set" in report.fault

        monkeypatch.setenv(KEY_ENV, RIGHT_KEY)
        again = run(job(tmp_path, server.url))
        sent = server.stats()["requests"] - refused
    assert again.outcome == "complete" and again.summary.done == N and again.exit_code == 0
    assert sent == N, "the rerun sends exactly the items not yet done"
    assert len(read_jsonl(tmp_path / "out.jsonl")) == N


def test_a_refused_key_is_named_by_its_variable_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, WRONG_KEY)
    with surge.sim.serve_in_thread(profile="fast", api_keys=frozenset({RIGHT_KEY})) as server:
        report = run(job(tmp_path, server.url))
    assert_stopped_with_everything_pending(report)
    assert report.fault is not None and f"the key in {KEY_ENV} was refused" in report.fault
    written = "".join(p.read_text(errors="replace") for p in tmp_path.glob("out*") if p.is_file())
    for secret in (WRONG_KEY, WRONG_KEY[:12]):
        assert secret not in report.fault and secret not in written


def test_a_base_url_where_nothing_listens_stops_at_once_and_a_fixed_url_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, RIGHT_KEY)
    wrong = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    report = run(job(tmp_path, wrong))
    assert time.monotonic() - start < 5.0, "stops instead of retrying every item"
    assert_stopped_with_everything_pending(report)
    assert report.fault is not None and f"nothing answers at {wrong}" in report.fault
    assert report.statistics is not None and report.statistics.attempts <= 3 * 8
    with surge.sim.serve_in_thread(profile="fast") as server:
        again = run(job(tmp_path, server.url))
        assert server.stats()["requests"] == N
    assert again.summary.done == N and again.exit_code == 0


async def _serve_error(
    status: int,
    payload: dict[str, Any],
    body: Callable[[JobSettings], Awaitable[JobReport]],
    tmp_path: Path,
) -> tuple[JobReport, int]:
    """A one-route server answering every request with `status` and `payload`."""
    seen = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal seen
        seen += 1
        return web.json_response(payload, status=status)

    server = web.Application()
    server.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(server)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        return await body(job(tmp_path, f"http://127.0.0.1:{port}/v1")), seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (
            429,
            {"message": "You exceeded your current quota.", "type": "insufficient_quota",
             "param": None, "code": "insufficient_quota"},
            "billing quota is spent",
        ),
        (
            403,
            {"message": "Project does not have access to model sim-small.",
             "type": "invalid_request_error", "param": None, "code": "model_not_found"},
            f"the key in {KEY_ENV} is not allowed",
        ),
    ],
)  # fmt: skip
def test_a_spent_quota_or_a_forbidden_key_stops_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, error: dict[str, Any], words: str
) -> None:
    monkeypatch.setenv(KEY_ENV, RIGHT_KEY)
    report, seen = asyncio.run(_serve_error(status, {"error": error}, run_job, tmp_path))
    assert_stopped_with_everything_pending(report)
    assert report.fault is not None and words in report.fault
    assert seen <= 8, f"{seen} requests sent after the first {status}"
    assert report.statistics is not None and report.statistics.retries == 0


def test_a_provider_that_answers_nobody_ends_the_job_with_rate_limited_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 429 goes back in the queue only while others are answered (test_anthropic_job):
    # here nobody is, so the job ends rather than requeueing forever, and says why.
    monkeypatch.setenv(KEY_ENV, RIGHT_KEY)
    refusal = {"message": "Rate limit reached.", "type": "requests", "code": "rate_limit_exceeded"}

    async def body(settings: JobSettings) -> JobReport:
        return await run_job(dataclasses.replace(settings, max_retries=0))

    report, seen = asyncio.run(_serve_error(429, {"error": refusal}, body, tmp_path))
    assert report.outcome == "complete" and report.summary.pending == 0
    assert report.summary.failed_by_reason == {"rate_limited": N}
    assert report.exit_code == 1
    assert seen == N


def test_a_hosted_api_without_its_key_is_refused_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = job(tmp_path, "https://api.openai.com/v1", api_key_env=None)
    with pytest.raises(JobInputError, match="OPENAI_API_KEY is not set") as caught:
        run(settings)
    assert "HINT:" in str(caught.value)
    assert not list(tmp_path.glob("out.jsonl*")), "a refused job leaves nothing behind"


def test_the_command_line_exits_non_zero_and_says_what_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    write_batch(tmp_path / "in.jsonl", N)
    with surge.sim.serve_in_thread(profile="fast", api_keys=frozenset({RIGHT_KEY})) as server:
        result = CliRunner().invoke(
            app,
            ["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
             "--base-url", server.url, "--api-key-env", KEY_ENV, "--no-progress",
             "--json-summary"],
        )  # fmt: skip
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["outcome"] == "stopped" and summary["pending"] == N
    assert f"{KEY_ENV} is not set" in summary["fault"]
    said_twice = [r for r in caplog.records if "stop_on_fault" in r.getMessage()]
    assert not said_twice, "said once, in the job's words"
