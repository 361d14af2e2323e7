"""Output files as views of the journal, each written whole and swapped in atomically.

The main output follows the OpenAI Batch output format, one line per input line:
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
Failures (and malformed input lines) also go to `OUTPUT.errors.jsonl` with the reason.
A crash mid-write leaves the previous file in place: the new one is written beside it
and renamed over it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from surge.jobs._model import JobInputError
from surge.jobs.journal import Journal

FINISHED = ("done", "failed", "invalid")


def errors_path(output: str | Path) -> Path:
    return Path(f"{output}.errors.jsonl")


def check_overwrite(output: str | Path, journal: Path, *, overwrite: bool) -> None:
    """Refuse, before anything is sent, to replace an output file that no surge journal
    belongs to: it may be last week's results."""
    output = Path(output)
    if overwrite or journal.exists() or not output.exists():
        return
    raise JobInputError(
        f"{output} already exists and no surge journal belongs to it (there is no "
        f"{journal}), so it may hold earlier results. HINT: pass --overwrite to replace it, "
        "-o another file to keep it, or --recover if it is this job's output and its "
        "journal was lost (its answers are then not asked for again)."
    )


def output_record(row: sqlite3.Row) -> dict[str, Any]:
    """One line of the Batch output format for a finished journal row."""
    response = None
    if row["status_code"] is not None:
        body = json.loads(row["response"]) if row["response"] else None
        response = {
            "status_code": row["status_code"],
            "request_id": row["request_id"],
            "body": body,
        }
    error = None
    if row["state"] != "done":
        error = {"code": row["error_code"] or "unknown", "message": row["error"] or ""}
    digest = hashlib.sha256(row["custom_id"].encode()).hexdigest()[:24]
    return {
        "id": f"batch_req_{digest}",
        "custom_id": row["custom_id"],
        "response": response,
        "error": error,
    }


def error_record(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "custom_id": row["custom_id"],
        "line": row["line"],
        "reason": row["error_code"] or "unknown",
        "message": row["error"] or "",
        "attempts": row["attempts"],
        "status_code": row["status_code"],
    }


def write_outputs(
    journal: Journal, output: str | Path, *, order: str = "input"
) -> tuple[Path, Path]:
    """(Re)build OUTPUT and OUTPUT.errors.jsonl from the journal; return their paths."""
    output = Path(output)
    records = (output_record(row) for row in journal.rows(order=order, states=FINISHED))
    if output.suffix == ".parquet":
        _atomic_parquet(output, records)
    else:
        with _atomic_text(output) as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    errors = errors_path(output)
    with _atomic_text(errors) as handle:
        for row in journal.rows(order=order, states=("failed", "invalid")):
            handle.write(json.dumps(error_record(row), ensure_ascii=False) + "\n")
    return output, errors


@contextlib.contextmanager
def _atomic_text(path: Path) -> Iterator[IO[str]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _atomic_parquet(path: Path, records: Iterator[dict[str, Any]]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise RuntimeError("Parquet output needs pyarrow: pip install pyarrow") from exc
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("custom_id", pa.string()),
            ("status_code", pa.int32()),
            ("request_id", pa.string()),
            ("body", pa.string()),
            ("error_code", pa.string()),
            ("error_message", pa.string()),
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with pq.ParquetWriter(temp, schema) as writer:
            batch: list[dict[str, Any]] = []
            for record in records:
                response = record["response"] or {}
                error = record["error"] or {}
                batch.append(
                    {
                        "id": record["id"],
                        "custom_id": record["custom_id"],
                        "status_code": response.get("status_code"),
                        "request_id": response.get("request_id"),
                        "body": None
                        if response.get("body") is None
                        else json.dumps(response["body"]),
                        "error_code": error.get("code"),
                        "error_message": error.get("message"),
                    }
                )
                if len(batch) >= 10_000:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
