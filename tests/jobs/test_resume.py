"""Crash safety of `surge run` as real processes: a `kill -9` at speed, two runs of the
same job at once, an output no journal belongs to, a damaged journal and `--recover`,
and an output that always follows the current input."""

from __future__ import annotations

import asyncio
import json
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
from surge.jobs import JobInputError, JobSettings, Journal, run_job
from surge.jobs.journal import JournalError, lock_path


def run(settings: JobSettings) -> Any:
    return asyncio.run(run_job(settings))


def cli(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "surge.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )  # fmt: skip


def run_args(source: Path | str, output: Path, url: str, *extra: str) -> list[str]:
    return ["run", str(source), "-o", str(output), "--base-url", url, "--no-progress", *extra]


def done_count(journal: Path) -> int:
    if not journal.exists():
        return 0
    try:
        with sqlite3.connect(journal, timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM items WHERE state = 'done'").fetchone()[0])
    except sqlite3.Error:
        return 0


def wait_for_done(journal: Path, at_least: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while done_count(journal) < at_least:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.01)


def reply_text(line: dict[str, Any]) -> str:
    return str(line["response"]["body"]["choices"][0]["message"]["content"])


def ok_count(server: surge.sim.SimServer) -> int:
    return int(server.stats()["by_status"].get("200", 0))


# -- item 9: after kill -9, paid twice <= concurrency ------------------------------------


def test_kill_9_at_full_speed_resends_at_most_the_concurrency(tmp_path: Path) -> None:
    n, concurrency = 1200, 20
    with surge.sim.serve_in_thread(profile="fast") as server:  # no latency, no limits
        source = write_batch(tmp_path / "in.jsonl", n)
        output = tmp_path / "out.jsonl"
        args = run_args(source, output, server.url, "--no-cache", "--rpm", "1000000",
                        "--concurrency", str(concurrency))  # fmt: skip
        process = cli(*args)
        wait_for_done(Path(f"{output}.journal"), n // 3, process)
        time.sleep(0.1)  # not just after a commit (when the count above moves)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        at_kill = done_count(Path(f"{output}.journal"))
        assert at_kill < n, "the job finished before the kill: make it longer"
        rerun = cli(*args)
        _, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err
        served = ok_count(server)
    lines = read_jsonl(output)
    assert [line["custom_id"] for line in lines] == [f"req-{i}" for i in range(n)]
    paid_twice = served - n
    assert 0 <= paid_twice <= concurrency, (paid_twice, at_kill)


# -- item 13: one run per journal ----------------------------------------------------------


def test_a_second_run_of_the_same_job_is_refused_and_the_first_carries_on(
    tmp_path: Path,
) -> None:
    n = 60  # 30 rounds of 0.25 s: the first run is still going when the second starts
    slow = surge.sim.Latency(ttft=0.25, per_token=0.0, jitter=0.0)
    with surge.sim.serve_in_thread(latency=slow) as server:
        source = write_batch(tmp_path / "in.jsonl", n)
        output = tmp_path / "out.jsonl"
        args = run_args(source, output, server.url, "--no-cache", "--concurrency", "2")
        first = cli(*args)
        wait_for_done(Path(f"{output}.journal"), 2, first)
        second = cli(*args)
        _, err = second.communicate(timeout=60)
        status = cli("status", str(output))
        status_out, status_err = status.communicate(timeout=60)
        _, first_err = first.communicate(timeout=60)
        served = ok_count(server)
    assert second.returncode == 2
    assert "Traceback" not in err and "database is locked" not in err, err
    message = " ".join(err.split())
    assert f"is in use by another surge run (pid {first.pid} on " in message, message
    assert "HINT:" in message and f"kill {first.pid}" in message
    assert first.returncode == 0, first_err
    assert served == n, "the second run sent nothing"
    assert [line["custom_id"] for line in read_jsonl(output)] == [f"req-{i}" for i in range(n)]
    # `surge status` reads beside the running job (no lock) and says who runs it.
    assert status.returncode == 0, status_err
    assert f"running now: pid {first.pid}" in status_out
    assert not lock_path(f"{output}.journal").exists(), "a clean exit removes the lock file"


def test_a_lock_left_by_a_killed_run_does_not_block_the_rerun(tmp_path: Path) -> None:
    journal_path = tmp_path / "out.jsonl.journal"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from surge.jobs import Journal; held = Journal(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(60)", str(journal_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    with pytest.raises(JournalError, match=rf"in use by another surge run \(pid {holder.pid} "):
        Journal(journal_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert lock_path(journal_path).exists(), "kill -9 leaves the file (but not the lock)"
    journal = Journal(journal_path)  # the OS dropped the lock with its holder
    journal.close()


# -- item 14: an output no journal belongs to is not overwritten ---------------------------


def test_an_existing_output_without_a_journal_is_not_overwritten(
    sim: surge.sim.SimServer, tmp_path: Path
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 5)
    output = tmp_path / "out.jsonl"
    output.write_text("last week's results\n")
    settings = JobSettings(str(source), str(output), base_url=sim.url)
    with pytest.raises(
        JobInputError, match=r"out.jsonl already exists and no surge journal"
    ) as exc:
        run(settings)
    assert "HINT: pass --overwrite" in str(exc.value)
    assert output.read_text() == "last week's results\n"
    assert sim.stats()["requests"] == 0 and not Path(f"{output}.journal").exists()
    report = run(JobSettings(str(source), str(output), base_url=sim.url, overwrite=True))
    assert report.summary.done == 5 and len(read_jsonl(output)) == 5
    # From now on the output is the journal's: a rerun needs no --overwrite.
    assert run(settings).summary.done == 5


def test_the_cli_refuses_to_overwrite_in_plain_words_until_told_to(
    sim: surge.sim.SimServer, tmp_path: Path
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 3)
    output = tmp_path / "out.jsonl"
    output.write_text("keep me\n")
    refused = cli(*run_args(source, output, sim.url))
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "Traceback" not in err
    assert "HINT: pass --overwrite" in " ".join(err.split())
    assert output.read_text() == "keep me\n" and sim.stats()["requests"] == 0
    allowed = cli(*run_args(source, output, sim.url, "--overwrite"))
    _, err = allowed.communicate(timeout=60)
    assert allowed.returncode == 0, err
    assert len(read_jsonl(output)) == 3


# -- item 15: a damaged journal, and --recover ---------------------------------------------


def test_a_damaged_journal_is_named_with_a_hint_and_recover_sends_only_the_rest(
    sim: surge.sim.SimServer, tmp_path: Path
) -> None:
    n = 30
    source = write_batch(tmp_path / "in.jsonl", n)
    output = tmp_path / "out.jsonl"
    journal = Path(f"{output}.journal")
    first = cli(*run_args(source, output, sim.url, "--no-cache"))
    assert first.communicate(timeout=60) and first.returncode == 0
    # Keep the answers of lines 10..29 only, as if the output were older than the job.
    lines = read_jsonl(output)
    output.write_text("".join(json.dumps(x) + "\n" for x in lines[10:]) + '{"cut off')
    journal.write_bytes(journal.read_bytes()[:5000])  # a truncated copy
    sent_before = sim.stats()["requests"]
    for command in (run_args(source, output, sim.url, "--no-cache"), ["status", str(output)]):
        process = cli(*command)
        _, err = process.communicate(timeout=60)
        message = " ".join(err.split())
        assert process.returncode == 2, err
        assert "Traceback" not in err and "DatabaseError" not in err, err
        assert f"{journal} is damaged" in message and "--recover" in message, message
    assert sim.stats()["requests"] == sent_before
    recover = cli(*run_args(source, output, sim.url, "--no-cache", "--recover", "--progress"))
    _, err = recover.communicate(timeout=60)
    assert recover.returncode == 0, err
    assert "Recovered 20 answers" in err and "moved aside" in err, err
    assert sim.stats()["requests"] - sent_before == 10, "only what the output lacked"
    assert Path(f"{journal}.damaged").exists(), "the damaged journal is kept for a look"
    recovered = read_jsonl(output)
    assert [x["custom_id"] for x in recovered] == [f"req-{i}" for i in range(n)]
    # Lines 10..29 are the output's own answers; 0..9 were asked again (same text).
    assert [x["response"]["body"] for x in recovered[10:]] == [
        x["response"]["body"] for x in lines[10:]
    ]
    assert [reply_text(x) for x in recovered] == [reply_text(x) for x in lines]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv"])
def test_a_journal_lost_with_the_output_kept_recovers_from_a_table_output(
    sim: surge.sim.SimServer, tmp_path: Path, suffix: str
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 12)
    output = tmp_path / f"out{suffix}"
    run(JobSettings(str(source), str(output), base_url=sim.url, cache=False))
    Path(f"{output}.journal").unlink()
    sent = sim.stats()["requests"]
    with pytest.raises(JobInputError, match="--recover if it is this job's output"):
        run(JobSettings(str(source), str(output), base_url=sim.url, cache=False))
    report = run(JobSettings(str(source), str(output), base_url=sim.url, cache=False, recover=True))
    assert report.summary.done == 12 and sim.stats()["requests"] == sent
    assert report.summary.cost > 0, "recovered answers are priced again"


def test_a_full_disk_stops_the_job_in_plain_words_and_the_rerun_finishes(
    sim: surge.sim.SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 200)
    output = tmp_path / "out.jsonl"
    original = Journal.ingest

    def ingest_then_fill_the_disk(self: Journal, *args: Any, **kwargs: Any) -> int:
        count = original(self, *args, **kwargs)
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        self._db.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLITE_FULL soon
        return count

    monkeypatch.setattr(Journal, "ingest", ingest_then_fill_the_disk)
    settings = JobSettings(str(source), str(output), base_url=sim.url, cache=False)
    with pytest.raises(JournalError, match=r"no space left to write the journal") as exc:
        run(settings)
    assert "HINT: free some disk space, then rerun the same command" in str(exc.value)
    assert not lock_path(f"{output}.journal").exists(), "the lock is let go"
    monkeypatch.setattr(Journal, "ingest", original)
    report = run(settings)  # space again: the rerun picks up what was committed
    assert report.summary.done == 200
    assert len(read_jsonl(output)) == 200


# -- item 8: the output is the current input -----------------------------------------------


def test_the_output_follows_the_current_input(sim: surge.sim.SimServer, tmp_path: Path) -> None:
    source = write_batch(tmp_path / "in.jsonl", 10)
    settings = JobSettings(str(source), str(tmp_path / "out.jsonl"), base_url=sim.url, cache=False)
    run(settings)
    lines = source.read_text().splitlines()
    extra = write_batch(tmp_path / "extra.jsonl", 1, start=10).read_text().splitlines()
    # Delete line 4 (req-3) and add one: 10 input lines, 10 output lines, in input order.
    source.write_text("\n".join(lines[:3] + lines[4:] + extra) + "\n")
    report = run(settings)
    ids = [x["custom_id"] for x in read_jsonl(tmp_path / "out.jsonl")]
    assert ids == [f"req-{i}" for i in (0, 1, 2, 4, 5, 6, 7, 8, 9, 10)]
    assert report.summary.total == 10 and sim.stats()["requests"] == 11
    # Restored, the line is answered from the journal: it was paid for once already.
    source.write_text("\n".join(lines + extra) + "\n")
    report = run(settings)
    assert [x["custom_id"] for x in read_jsonl(tmp_path / "out.jsonl")] == [
        f"req-{i}" for i in range(11)
    ]
    assert report.summary.done == 11 and sim.stats()["requests"] == 11


def test_stdin_with_other_content_is_never_merged(sim: surge.sim.SimServer, tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"

    def from_stdin(text: str) -> tuple[int, str]:
        process = cli("run", "-", "-o", str(output), "--base-url", sim.url, "--no-progress",
                      "--no-cache", "--model", "sim-small", stdin=subprocess.PIPE)  # fmt: skip
        _, err = process.communicate(text, timeout=60)
        return process.returncode, err

    code, err = from_stdin('{"prompt": "one"}\n{"prompt": "two"}\n')
    assert code == 0, err
    # Other prompts on the same lines: the derived ids differ, so it is the new content
    # alone in the output, never the old lines beside it.
    code, err = from_stdin('{"prompt": "three"}\n')
    assert code == 0, err
    texts = [reply_text(x) for x in read_jsonl(output)]
    expected = surge.sim.expected_reply({"messages": [{"role": "user", "content": "three"}]})
    assert texts == [expected.text]
    # The same ids with other requests are refused in plain words.
    code, err = from_stdin('{"custom_id": "a", "prompt": "x"}\n')
    assert code == 0, err
    code, err = from_stdin('{"custom_id": "a", "prompt": "y"}\n')
    message = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert "stdin holds other requests than the job this journal records" in message, message
