"""The journal: ingest, duplicate and changed ids, pending order, small transactions."""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
from pathlib import Path

import pytest

from surge.jobs._model import InputError, JobInputError, Request
from surge.jobs.journal import Journal, JournalError, Outcome, lock_path
from surge.jobs.output import write_outputs


def chat(custom_id: str, line: int, text: str = "hi") -> Request:
    return Request(
        custom_id,
        line,
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": text}]},
    )


def test_ingest_makes_every_line_pending_in_input_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.ingest(
        [chat("b", 1), chat("a", 2), InputError("in.jsonl", 3, "bad JSON"), chat("c", 4)],
        source="in.jsonl",
    )
    assert [p.custom_id for p in journal.pending(chunk=2)] == ["b", "a", "c"]
    summary = journal.summary()
    assert (summary.total, summary.pending, summary.invalid) == (4, 3, 1)
    assert summary.failed_by_reason == {"invalid_input": 1}


def test_duplicate_custom_id_stops_before_anything_is_written(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    with pytest.raises(JobInputError, match=r"duplicate custom_id: 'a' on lines 1, 3"):
        journal.ingest([chat("a", 1), chat("b", 2), chat("a", 3)], source="in.jsonl")
    assert journal.count() == 0


def test_rerun_with_same_input_adds_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    lines = [chat("a", 1), chat("b", 2)]
    journal.ingest(lines, source="in")
    journal.record(Outcome("a", "done", 1, status_code=200, response={"ok": True}))
    journal.commit()
    journal.ingest(lines, source="in")
    assert journal.count() == 2
    assert [p.custom_id for p in journal.pending()] == ["b"]


def test_changed_request_under_an_existing_id_is_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.ingest([chat("a", 1, "one"), chat("b", 2)], source="in")
    with pytest.raises(JobInputError, match=r"input changed.*'a' \(line 1\)"):
        journal.ingest([chat("a", 1, "two"), chat("b", 2)], source="in")


def test_results_are_committed_once_per_event_loop_tick(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = Journal(path)
    journal.ingest([chat(f"id{i}", i) for i in range(120)], source="in")
    other = sqlite3.connect(path)  # another process, e.g. the rerun after a kill -9

    def done() -> int:
        return int(other.execute("SELECT COUNT(*) FROM items WHERE state = 'done'").fetchone()[0])

    async def receive() -> list[int]:
        seen = []
        for i in range(60):  # 60 results arriving in one tick share one commit
            journal.record(Outcome(f"id{i}", "done", 1, status_code=200, response={"i": i}))
        seen.append(done())
        await asyncio.sleep(0)  # the tick ends: the group commit runs
        seen.append(done())
        journal.record(Outcome("id60", "done", 1, status_code=200, response={}))
        await asyncio.sleep(0)
        seen.append(done())
        return seen

    assert asyncio.run(receive()) == [0, 60, 61]
    # Outside an event loop there is nothing to group with: each write commits at once.
    journal.record(Outcome("id61", "done", 1, status_code=200, response={}))
    assert done() == 62
    journal.close()


def test_a_commit_left_scheduled_on_a_closed_loop_does_not_stall_later_writes(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "j")
    journal.ingest([chat("a", 1), chat("b", 2)], source="in")

    loop = asyncio.new_event_loop()

    async def record_and_leave() -> None:
        journal.record(Outcome("a", "done", 1, status_code=200, response={}))
        loop.stop()  # the loop ends with this tick: its commit never runs

    loop.run_until_complete(record_and_leave())
    loop.close()
    journal.record(Outcome("b", "done", 1, status_code=200, response={}))
    other = sqlite3.connect(tmp_path / "j")
    assert other.execute("SELECT COUNT(*) FROM items WHERE state = 'done'").fetchone()[0] == 2
    journal.close()


def test_retry_failed_puts_failures_back(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.ingest([chat("a", 1), chat("b", 2)], source="in")
    journal.record(
        Outcome("a", "failed", 6, status_code=503, error_code="server_error", error="HTTP 503")
    )
    journal.commit()
    assert journal.summary().failed_by_reason == {"server_error": 1}
    assert journal.retry_failed() == 1
    assert [p.custom_id for p in journal.pending()] == ["a", "b"]


def test_outputs_follow_the_batch_format_one_line_per_input(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.ingest(
        [chat("a", 1), InputError("in", 2, "expected an object", field="body"), chat("c", 3)],
        source="in",
    )
    journal.record(Outcome("c", "done", 1, status_code=200, request_id="req-1", response={"x": 1}))
    journal.record(
        Outcome("a", "failed", 1, status_code=400, error_code="bad_request", error="HTTP 400: no")
    )
    journal.commit()
    output, errors = write_outputs(journal, tmp_path / "out.jsonl")
    lines = [json.loads(x) for x in output.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == ["a", "invalid-line-2", "c"]
    assert lines[2]["response"] == {"status_code": 200, "request_id": "req-1", "body": {"x": 1}}
    assert lines[2]["error"] is None and lines[2]["id"].startswith("batch_req_")
    assert lines[0]["error"] == {"code": "bad_request", "message": "HTTP 400: no"}
    assert (
        lines[1]["response"] is None
        and "in:2: body: expected an object" in lines[1]["error"]["message"]
    )
    reasons = [json.loads(x)["reason"] for x in errors.read_text().splitlines()]
    assert reasons == ["bad_request", "invalid_input"]
    completion = write_outputs(journal, tmp_path / "by-completion.jsonl", order="completion")[0]
    assert len(completion.read_text().splitlines()) == 3
    assert not list(tmp_path.glob(".*.tmp")), "temporary files are renamed or removed"


def test_a_malformed_line_fixed_on_a_rerun_takes_its_place(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.ingest(
        [chat("a", 1), InputError("in", 2, "bad JSON", custom_id="b"), chat("c", 3)], source="in"
    )
    journal.ingest([chat("a", 1), chat("b", 2, "fixed"), chat("c", 3)], source="in")
    assert [p.custom_id for p in journal.pending()] == ["a", "c", "b"]
    assert journal.summary().invalid == 0
    for custom_id in ("a", "b", "c"):
        journal.record(Outcome(custom_id, "done", 1, status_code=200, response={}))
    journal.commit()
    output, _ = write_outputs(journal, tmp_path / "out.jsonl")
    assert [json.loads(x)["custom_id"] for x in output.read_text().splitlines()] == ["a", "b", "c"]
    # A malformed line without an id gets a placeholder id; fixed, it is replaced too.
    journal.ingest(
        [chat("a", 1), chat("b", 2, "fixed"), chat("c", 3), InputError("in", 4, "bad")], source="in"
    )
    journal.ingest([chat("a", 1), chat("b", 2, "fixed"), chat("c", 3), chat("d", 4)], source="in")
    assert journal.summary().invalid == 0 and journal.count() == 4


def test_a_damaged_journal_is_named_with_how_to_go_on(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.journal"
    garbage.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(JournalError, match=r"garbage.journal is damaged .*file is not a database"):
        Journal(garbage)
    with pytest.raises(JournalError, match=r"HINT: rerun the same command with --recover"):
        Journal(garbage, readonly=True)
    assert not lock_path(garbage).exists(), "a refused open lets go of the lock"
    # --recover moves it aside and starts afresh in its place.
    journal = Journal(garbage, recover=True)
    assert journal.moved_aside == tmp_path / "garbage.journal.damaged" and journal.count() == 0
    journal.close()
    assert journal.moved_aside.read_bytes() == bytes(range(256)) * 40


def test_a_journal_dropped_without_close_lets_go_of_its_lock(tmp_path: Path) -> None:
    Journal(tmp_path / "j")  # never closed: collected at once
    gc.collect()
    Journal(tmp_path / "j").close()
