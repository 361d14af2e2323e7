"""Journals for report tests: one real job against the simulator (with faults and 429s),
and small hand-written ones for the edge cases."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path

import pytest

import surge.sim
from surge.jobs import JobSettings, run_job
from surge.jobs._model import Request
from surge.jobs.journal import Journal, Outcome

SECRET = "sk-report-test-secret-0123456789"


def write_batch(path: Path, n: int, *, poison: Iterable[int] = ()) -> Path:
    bad = set(poison)
    with path.open("w") as handle:
        for i in range(n):
            text = f"Question {i}: name a colour." + (f" {surge.sim.POISON}" if i in bad else "")
            body = {
                "model": "sim-small",
                "messages": [{"role": "user", "content": text}],
                "max_tokens": 16,
            }
            handle.write(
                json.dumps(
                    {
                        "custom_id": f"req-{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": body,
                    }
                )
                + "\n"
            )
    return path


@pytest.fixture(scope="session")
def real_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished job with retries, 429s and final failures; returns its OUTPUT path.

    The simulator's RPM and burst are below the client's, so the first wave (24 at once,
    against a burst of 10) meets 429s; faults add 5xx, resets and malformed bodies; two
    poisoned lines fail for good (bad_request).
    The API key is passed by environment variable and must never reach the report.
    """
    folder = tmp_path_factory.mktemp("real_job")
    source = write_batch(folder / "in.jsonl", 150, poison=(3, 50))
    output = folder / "out.jsonl"
    faults = surge.sim.Faults(error_500=0.04, error_503=0.03, reset=0.02, malformed=0.02)
    env_name = "SURGE_REPORT_TEST_KEY"
    mp = pytest.MonkeyPatch()
    mp.setenv(env_name, SECRET)
    mp.setenv("SURGE_CACHE_DIR", str(folder / "cache"))
    try:
        with surge.sim.serve_in_thread(
            profile="fast",
            rpm=3000,
            burst_seconds=0.2,
            seed=11,
            faults=faults,
            latency=surge.sim.Latency(ttft=0.05, per_token=0.002, jitter=0.3),
        ) as server:
            settings = JobSettings(
                input=str(source),
                output=str(output),
                base_url=server.url,
                model="sim-small",
                rpm=6000,
                concurrency=24,
                cache=False,
                timeout=5,
                api_key_env=env_name,
            )
            report = asyncio.run(run_job(settings))
    finally:
        mp.undo()
    assert report.summary.done >= 130 and report.summary.failed == 2
    return output


def chat(i: int) -> Request:
    return Request(
        f"req-{i}",
        i + 1,
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": str(i)}]},
    )


def make_journal(
    path: Path,
    n: int,
    *,
    finished: int | None = None,
    cached: bool = False,
    failed: Iterable[int] = (),
    runs: Iterable[tuple[float, float | None, str | None]] = ((0.0, 10.0, "complete"),),
    settings: dict[str, object] | None = None,
) -> Path:
    """A journal written through the Journal API: ``finished`` of ``n`` items answered
    at one per 0.1 s from t0 (the rest pending), ``failed`` ones as server errors."""
    t0 = 1_750_000_000.0
    journal = Journal(path)
    journal.ingest([chat(i) for i in range(n)], source="in.jsonl")
    for started, ended, outcome in runs:
        run_id = journal.start_run(
            settings or {"input": "in.jsonl", "model": "m", "rpm": 600, "concurrency": 8}
        )
        journal._db.execute(
            "UPDATE runs SET started_at = ? WHERE rowid = ?", (t0 + started, run_id)
        )
        if ended is not None:
            journal.end_run(run_id, outcome or "complete")
            journal._db.execute(
                "UPDATE runs SET ended_at = ? WHERE rowid = ?", (t0 + ended, run_id)
            )
    bad = set(failed)
    for i in range(n if finished is None else finished):
        start = t0 + 0.1 * i
        if i in bad:
            journal.record_attempt(start + 0.2, f"req-{i}", "server_error", 503, "busy")
            journal.record(
                Outcome(
                    f"req-{i}",
                    "failed",
                    2,
                    status_code=500,
                    error_code="server_error",
                    error="boom",
                    started_at=start,
                    finished_at=start + 0.5,
                    latency=0.2,
                )
            )
        else:
            journal.record(
                Outcome(
                    f"req-{i}",
                    "done",
                    1,
                    status_code=200,
                    response={"ok": 1},
                    input_tokens=10,
                    output_tokens=5,
                    cost=0.0 if cached else 0.001,
                    cached=cached,
                    started_at=start,
                    finished_at=start if cached else start + 0.3,
                    latency=0.0 if cached else 0.3,
                )
            )
    journal.close()
    return path


@pytest.fixture(scope="session")
def real_report(real_job: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The real job's HTML report and summary PNG, built once for every test that reads them."""
    from surge.report import build_report

    folder = tmp_path_factory.mktemp("real_report")
    html = build_report(real_job, folder / "report.html", png_path=folder / "report.png")
    return html, folder / "report.png"
