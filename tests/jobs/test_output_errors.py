"""Outputs that cannot be written (a full disk) and the errors surge.jobs makes public."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.jobs.conftest import read_jsonl, write_batch
from typer.testing import CliRunner

import surge.jobs
import surge.sim
from surge.cli import app
from surge.jobs import Journal, OutputError
from surge.jobs.output import write_outputs

FULL = Path("/dev/full")  # Linux: every write to it fails with ENOSPC


def fill_the_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The output's new file is created as usual, but what is written to it goes to
    /dev/full, so it fails with ENOSPC as it would on a full disk."""
    if not FULL.exists():
        pytest.skip("needs /dev/full")
    real: Callable[..., Any] = os.fdopen

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        full = os.open(FULL, os.O_WRONLY)
        os.dup2(full, fd)  # the same descriptor, now writing to /dev/full
        os.close(full)
        return real(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("name", ["out.jsonl", "out.csv", "out.parquet"])
def test_a_full_disk_leaves_the_previous_output_and_a_rerun_rebuilds_it(
    sim: surge.sim.SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 6, poison={2})
    output = tmp_path / name
    args = ["run", str(source), "-o", str(output), "--base-url", sim.url, "--no-progress"]
    args += ["--max-retries", "1", "--timeout", "5"]
    first = cli(*args)
    assert first.exit_code == 1, first.output  # one poisoned line failed
    before = output.read_bytes()
    errors_before = Path(f"{output}.errors.jsonl").read_bytes()
    sent = sim.stats()["requests"]

    # The input grows by a line; the rerun answers it, then the disk is full.
    write_batch(tmp_path / "more.jsonl", 7, poison={2})
    os.replace(tmp_path / "more.jsonl", source)
    with monkeypatch.context() as patch:
        fill_the_disk(patch)
        full = cli(*args)
    assert full.exit_code == 2, full.output
    assert full.exception is None or isinstance(full.exception, SystemExit), full.exception
    message = " ".join(full.stderr.split())
    assert "Traceback" not in full.output
    assert f"{output}: no space left to write it" in message, message
    assert f"previous {name} is left as it was" in message
    assert "HINT: every result is in the journal" in message and "free some disk space" in message
    assert output.read_bytes() == before, "the previous output is intact"
    assert Path(f"{output}.errors.jsonl").read_bytes() == errors_before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert sim.stats()["requests"] == sent + 1, "only the new line was sent"

    rerun = cli(*args)
    assert rerun.exit_code == 1, rerun.output  # the poisoned line is still failed
    assert sim.stats()["requests"] == sent + 1, "the rerun sends nothing"
    assert output.read_bytes() != before
    assert [e["custom_id"] for e in read_jsonl(Path(f"{output}.errors.jsonl"))] == ["req-2"]
    journal = Journal(Path(f"{output}.journal"), readonly=True)
    try:
        assert journal.summary().done == 6
    finally:
        journal.close()


def test_a_full_disk_on_the_first_run_claims_no_previous_output(
    sim: surge.sim.SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 3)
    output = tmp_path / "out.jsonl"
    args = ["run", str(source), "-o", str(output), "--base-url", sim.url, "--no-progress"]
    with monkeypatch.context() as patch:
        fill_the_disk(patch)
        full = cli(*args)
    assert full.exit_code == 2, full.output
    message = " ".join(full.stderr.split())
    assert f"{output}: no space left to write it" in message and "HINT:" in message
    assert "previous" not in message
    assert not output.exists() and not list(tmp_path.glob("*.tmp"))
    rerun = cli(*args)
    assert rerun.exit_code == 0, rerun.output
    assert len(read_jsonl(output)) == 3 and sim.stats()["requests"] == 3


def test_an_unwritable_errors_file_is_named_too(
    sim: surge.sim.SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 3)
    output = tmp_path / "out.jsonl"
    assert cli("run", str(source), "-o", str(output), "--base-url", sim.url).exit_code == 0
    Path(f"{output}.errors.jsonl").unlink()
    Path(f"{output}.errors.jsonl").mkdir()  # a folder where the file goes: not a full disk
    journal = Journal(Path(f"{output}.journal"))
    try:
        with pytest.raises(OutputError) as caught:
            write_outputs(journal, output)
    finally:
        journal.close()
    text = str(caught.value)
    assert text.startswith(f"{output}.errors.jsonl: cannot write it (")
    assert "HINT: every result is in the journal" in text and "rerun the same command" in text


def test_every_public_error_of_surge_jobs_is_in_its_api() -> None:
    errors = set()
    for module in pkgutil.iter_modules(surge.jobs.__path__, "surge.jobs."):
        for name, value in vars(importlib.import_module(module.name)).items():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and value.__module__.startswith("surge.jobs")
                and not name.startswith("_")
            ):
                errors.add(name)
    assert {"JobInputError", "JournalError", "OutputError"} <= errors
    assert errors <= set(surge.jobs.__all__), errors - set(surge.jobs.__all__)
    for name in errors:
        assert getattr(surge.jobs, name).__name__ == name
