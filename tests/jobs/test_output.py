"""Output files: the format the name asks for, flat columns, permissions, and options
refused before a journal exists."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.jobs.conftest import read_jsonl, write_batch
from typer.testing import CliRunner

import surge.sim
from surge.cli import app
from surge.jobs import JobInputError, JobSettings, run_job
from surge.jobs.output import FLAT_COLUMNS, output_format


def run(server: surge.sim.SimServer, tmp_path: Path, source: Path, **changes: Any) -> Any:
    values: dict[str, Any] = {
        "input": str(source),
        "output": str(tmp_path / "out.jsonl"),
        "base_url": server.url,
        "concurrency": 8,
        "max_retries": 1,
        "timeout": 5.0,
    }
    values.update(changes)
    return asyncio.run(run_job(JobSettings(**values)))


def expected_text(i: int) -> str:
    body = {"messages": [{"role": "user", "content": f"Question {i}: name a colour."}]}
    return surge.sim.expected_reply({**body, "max_tokens": 24}).text


@pytest.fixture
def umask_027() -> Iterator[None]:
    previous = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(previous)


def test_csv_output_is_csv_with_flat_columns(sim: surge.sim.SimServer, tmp_path: Path) -> None:
    source = write_batch(tmp_path / "in.jsonl", 6, poison={4})
    report = run(sim, tmp_path, source, output=str(tmp_path / "out.csv"))
    assert report.summary.done == 5 and report.summary.failed == 1
    with (tmp_path / "out.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == FLAT_COLUMNS
    assert [row["custom_id"] for row in rows] == [f"req-{i}" for i in range(6)]
    for i, row in enumerate(rows):
        if i == 4:
            assert row["text"] == "" and row["error_code"] == "bad_request"
            assert "poison" in row["error"] and row["status_code"] == "400"
            continue
        body = json.loads(row["body"])
        assert row["text"] == expected_text(i) == body["choices"][0]["message"]["content"]
        assert row["finish_reason"] == body["choices"][0]["finish_reason"]
        assert int(row["input_tokens"]) == body["usage"]["prompt_tokens"]
        assert int(row["output_tokens"]) == body["usage"]["completion_tokens"] > 0
        assert row["error"] == "" and row["error_code"] == ""


def test_parquet_output_has_the_same_flat_columns(sim: surge.sim.SimServer, tmp_path: Path) -> None:
    parquet = pytest.importorskip("pyarrow.parquet")
    source = write_batch(tmp_path / "in.jsonl", 4)
    run(sim, tmp_path, source, output=str(tmp_path / "out.parquet"))
    table = parquet.read_table(tmp_path / "out.parquet")
    assert tuple(table.column_names) == FLAT_COLUMNS
    assert str(table.schema.field("output_tokens").type) == "int64"
    rows = table.to_pylist()
    assert [row["text"] for row in rows] == [expected_text(i) for i in range(4)]
    assert all(row["finish_reason"] and row["error"] is None for row in rows)
    assert [json.loads(row["body"])["usage"]["completion_tokens"] for row in rows] == [
        row["output_tokens"] for row in rows
    ]


def test_anthropic_replies_fill_the_same_columns(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"prompt": "Say hi", "max_tokens": 16}) + "\n")
    with surge.sim.serve_in_thread(profile="fast") as server:
        report = asyncio.run(
            run_job(
                JobSettings(
                    input=str(source), output=str(tmp_path / "out.tsv"), provider="anthropic",
                    base_url=server.base_url + "/v1", model="claude-3-5-haiku",
                    endpoint="/v1/messages", timeout=5.0,
                )
            )
        )  # fmt: skip
    assert report.summary.done == 1
    with (tmp_path / "out.tsv").open(newline="") as handle:
        [row] = list(csv.DictReader(handle, delimiter="\t"))
    body = json.loads(row["body"])
    assert row["text"] == body["content"][0]["text"] and row["text"]
    assert row["finish_reason"] == body["stop_reason"]
    assert int(row["output_tokens"]) == body["usage"]["output_tokens"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("out.jsonl", "jsonl"), ("out", "jsonl"), ("OUT.CSV", "csv"), ("o.tsv", "tsv"),
     ("o.pq", "parquet"), ("o.json", "jsonl")],
)  # fmt: skip
def test_output_format_follows_the_name(name: str, expected: str) -> None:
    assert output_format(name) == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"output": "out.xlsx"}, "cannot write a .xlsx file. HINT: name the output .jsonl"),
        ({"format": "xml"}, "unknown format 'xml'"),
        ({"endpoint": "/v1/completion"}, "unknown endpoint '/v1/completion'"),
        ({"input": "missing.jsonl"}, "missing.jsonl: cannot read"),
        ({"input": "docs.csv", "model": None}, "no model"),
        ({"input": "docs.csv", "prompt_column": "nope"}, "nope"),
    ],
)
def test_bad_options_leave_no_journal_behind(
    sim: surge.sim.SimServer, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    write_batch(tmp_path / "in.jsonl", 2)
    (tmp_path / "docs.csv").write_text("text\nhello\n")
    changes = {**changes}
    for key in ("input", "output"):
        if key in changes:
            changes[key] = str(tmp_path / changes[key])
    if "docs.csv" in changes.get("input", ""):
        changes.setdefault("prompt_column", "text")
        changes.setdefault("model", "sim-small")
        if changes["model"] is None:
            del changes["model"]
    with pytest.raises(JobInputError) as caught:
        run(sim, tmp_path, tmp_path / "in.jsonl", **changes)
    assert message in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == [
        "docs.csv",
        "in.jsonl",
    ], "nothing created: a corrected rerun starts clean"


def test_outputs_and_journal_share_their_permissions(
    sim: surge.sim.SimServer, tmp_path: Path, umask_027: None
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 3, poison={1})
    for name in ("out.jsonl", "out.csv", "out.parquet"):
        run(sim, tmp_path, source, output=str(tmp_path / name))
        paths = [tmp_path / name, tmp_path / f"{name}.errors.jsonl", tmp_path / f"{name}.journal"]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths}
        assert set(modes.values()) == {0o640}, modes  # 0644 less the umask, like SQLite's
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize(
    ("name", "content", "options"),
    [
        ("empty", "\n\n", []),
        ("empty.jsonl", "", []),
        ("empty.csv", "", ["--model", "sim-small", "--prompt-column", "text"]),
        ("blank.csv", "\n", []),
    ],
)
def test_an_empty_input_warns_and_exits_0(
    sim: surge.sim.SimServer, tmp_path: Path, name: str, content: str, options: list[str]
) -> None:
    (tmp_path / name).write_text(content)
    result = CliRunner().invoke(
        app,
        ["run", str(tmp_path / name), "-o", str(tmp_path / "out.jsonl"),
         "--base-url", sim.url, "--no-progress", "--json-summary", *options],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())  # rich wraps long paths
    assert "warning:" in said and f"{name} holds no requests (it is empty)" in said
    assert json.loads(result.stdout)["total"] == 0
    assert read_jsonl(tmp_path / "out.jsonl") == []
    assert sim.stats()["requests"] == 0
