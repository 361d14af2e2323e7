"""The report is of the current input, as the output and `surge status` are: lines
deleted from the input stay in the journal (with their answers) but are not counted."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from tests.report.conftest import chat, make_journal, write_batch
from typer.testing import CliRunner

import surge.sim
from surge.cli import app
from surge.jobs import JobSettings, Journal, run_job
from surge.report import build_report, load_job
from surge.report._html import header_rows


def test_a_line_deleted_from_the_input_leaves_the_report_as_it_leaves_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SURGE_CACHE_DIR", str(tmp_path / "cache"))
    source = write_batch(tmp_path / "in.jsonl", 8, poison=(3,))
    output = tmp_path / "out.jsonl"
    with surge.sim.serve_in_thread(profile="fast") as server:
        settings = JobSettings(input=str(source), output=str(output), base_url=server.url)
        assert asyncio.run(run_job(settings)).summary.failed == 1
        before = load_job(output)
        assert (before.total, before.counts.get("failed"), before.left_out) == (8, 1, 0)
        # Delete the failed line and a done one; add one new line.
        lines = source.read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["custom_id"] not in ("req-3", "req-5")]
        extra = json.loads(lines[0])
        extra["custom_id"] = "req-new"
        extra["body"]["messages"][0]["content"] = "A new question."
        source.write_text("\n".join([*kept, json.dumps(extra)]) + "\n")
        report = asyncio.run(run_job(settings))
    assert report.summary.total == 7 and report.summary.failed == 0
    assert len(output.read_text().splitlines()) == 7

    data = load_job(output)
    status = json.loads(CliRunner().invoke(app, ["status", str(output), "--json"]).stdout)
    assert data.total == status["total"] == 7
    assert data.counts == {"done": 7}
    assert data.counts.get("done", 0) == status["done"]
    assert data.counts.get("failed", 0) == status["failed"] == 0
    assert data.failed_by_reason == status["failed_by_reason"] == {}
    assert data.cached == status["cached"] == 0
    assert data.left_out == 2
    assert dict(header_rows(data))["left out"].startswith("2 earlier answers")
    assert data.finished.size == data.answered.size == data.token_times.size == 7
    assert float(data.cost.sum()) == pytest.approx(status["cost_usd"], abs=1e-6)
    assert int(data.input_tokens.sum()) == status["input_tokens"]

    # Both rows are still in the journal, answers and all, should the lines come back.
    with sqlite3.connect(f"{output}.journal") as db:
        kept_rows = dict(db.execute("SELECT custom_id, state FROM items WHERE present = 0"))
    assert kept_rows == {"req-3": "failed", "req-5": "done"}

    html = build_report(output, tmp_path / "report.html").read_text()
    assert "<tr><th>items</th><td>7</td></tr>" in html
    assert "<tr><th>failed</th><td>0</td></tr>" in html


def test_retries_of_rows_no_longer_in_the_input_are_left_out(tmp_path: Path) -> None:
    path = make_journal(tmp_path / "j.journal", 10, failed=(2, 7))
    everything = load_job(path)
    assert everything.counts == {"done": 8, "failed": 2}
    assert everything.retried_by_reason == {"server_error": 2}
    assert everything.attempt_times.size == 2

    journal = Journal(path)  # the input now holds every line but req-7 and req-8
    journal.ingest([chat(i) for i in range(10) if i not in (7, 8)], source="in.jsonl")
    journal.close()
    data = load_job(path)
    assert data.counts == {"done": 7, "failed": 1} and data.left_out == 2
    assert data.failed_by_reason == {"server_error": 1}
    assert data.retried_by_reason == {"server_error": 1}
    assert data.attempt_times.size == data.attempt_is_429.size == 1
    assert data.finished.size == data.starts.size == data.latency.size == 8
    assert data.cost.sum() == pytest.approx(0.007)
    readonly = Journal(path, readonly=True)
    try:
        summary = readonly.summary()
    finally:
        readonly.close()
    assert (summary.total, summary.done, summary.failed) == (data.total, 7, 1)
    assert summary.failed_by_reason == data.failed_by_reason


def test_a_journal_from_before_rows_could_leave_the_input_counts_every_row(
    tmp_path: Path,
) -> None:
    path = make_journal(tmp_path / "old.journal", 4, failed=(1,))
    with sqlite3.connect(path) as db:  # surge 0.x: no items.present column
        db.execute("ALTER TABLE items DROP COLUMN present")
    data = load_job(path)
    assert data.counts == {"done": 3, "failed": 1} and data.left_out == 0
    assert data.attempt_times.size == 1
