"""Output files as views of the journal, each written whole and swapped in atomically.

The output's format follows its name: `.jsonl` (also `.ndjson`, `.json`, or no
extension) is the OpenAI Batch output format, one line per input line:
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
`.csv`, `.tsv` and `.parquet` hold one row per input line with flat columns (see
`FLAT_COLUMNS`: the reply's text, finish reason, tokens and error) beside the raw
response body as a JSON string. Any other extension is refused before the job starts.
Failures (and malformed input lines) also go to `OUTPUT.errors.jsonl` with the reason.

A crash mid-write, or a write that fails (a full disk), leaves the previous file in
place: the new one is written beside it and renamed over it. A write that fails is an
`OutputError` naming the file, with a HINT: the journal holds every result, so a rerun
rebuilds the outputs without asking again for any answer. Files are created with the journal's permissions (SQLite's 0644,
less the umask), not the 0600 of a temporary file.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

from surge.jobs._model import JobInputError
from surge.jobs.journal import Journal

__all__ = [
    "FLAT_COLUMNS",
    "OUTPUT_SUFFIXES",
    "OutputError",
    "check_overwrite",
    "errors_path",
    "flat_record",
    "output_format",
    "write_outputs",
]

FINISHED = ("done", "failed", "invalid")
OutputFormat = Literal["jsonl", "csv", "tsv", "parquet"]
OUTPUT_SUFFIXES: dict[str, OutputFormat] = {
    "": "jsonl",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
#: The columns of a CSV, TSV or Parquet output, in order. `text` is the reply (chat:
#: the first choice's message; Anthropic: its text blocks joined), `finish_reason`
#: OpenAI's `finish_reason` or Anthropic's `stop_reason`, `error_code`/`error` why an
#: item failed, and `body` the whole response body as JSON.
FLAT_COLUMNS = (
    "custom_id", "text", "finish_reason", "input_tokens", "output_tokens", "error_code",
    "error", "status_code", "request_id", "id", "body",
)  # fmt: skip
# What SQLite creates the journal with; the umask applies to both.
_FILE_MODE = 0o644
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class OutputError(JobInputError):
    """An output file cannot be written (a full disk, no permission). The previous file
    is left as it was, and the journal holds every result: once the cause is fixed, the
    same command rebuilds the outputs without asking again for any answer."""


def _unwritable(path: Path, journal: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    kept = f"; the previous {path.name} is left as it was" if path.exists() else ""
    rerun = (
        "rerun the same command: it rebuilds the output from the journal without asking "
        "again for any answer it holds."
    )
    if exc.errno in _NO_SPACE:
        return OutputError(
            f"{path}: no space left to write it ({reason}){kept}. HINT: every result is in "
            f"the journal {journal}; free some disk space, then {rerun}"
        )
    return OutputError(
        f"{path}: cannot write it ({reason}){kept}. HINT: every result is in the journal "
        f"{journal}; fix that (the folder, its permissions), then {rerun}"
    )


def output_format(output: str | Path) -> OutputFormat:
    """The format an output path asks for, by its extension; JobInputError if none.

    Example:
        >>> output_format("out.csv"), output_format("results/out.parquet")
        ('csv', 'parquet')
    """
    suffix = Path(output).suffix.lower()
    found = OUTPUT_SUFFIXES.get(suffix)
    if found is None:
        raise JobInputError(
            f"{output}: cannot write a {suffix} file. HINT: name the output .jsonl (the "
            "OpenAI Batch output format), .csv, .tsv or .parquet (one row per line: "
            "custom_id, text, finish_reason, tokens, error, and the raw body)"
        )
    return found


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


def flat_record(row: sqlite3.Row) -> dict[str, Any]:
    """One row of a CSV/TSV/Parquet output (`FLAT_COLUMNS`) for a finished journal row.

    Example:
        >>> row = {"custom_id": "a", "state": "done", "status_code": 200, "request_id": "r",
        ...        "response": '{"choices": [{"message": {"content": "Hi"}, "finish_reason": "stop"}]}',
        ...        "error_code": None, "error": None, "input_tokens": 3, "output_tokens": 1}
        >>> flat = flat_record(row)  # a dict stands in for the sqlite3.Row
        >>> flat["text"], flat["finish_reason"]
        ('Hi', 'stop')
    """
    record = output_record(row)
    body = record["response"]["body"] if record["response"] else None
    text, finish = _reply_text(body)
    error = record["error"] or {}
    done = row["state"] == "done"
    return {
        "custom_id": record["custom_id"],
        "text": text,
        "finish_reason": finish,
        "input_tokens": row["input_tokens"] if done else None,
        "output_tokens": row["output_tokens"] if done else None,
        "error_code": error.get("code"),
        "error": error.get("message"),
        "status_code": row["status_code"],
        "request_id": row["request_id"],
        "id": record["id"],
        "body": None if body is None else json.dumps(body, ensure_ascii=False),
    }


def _reply_text(body: Any) -> tuple[str | None, str | None]:
    """(text, finish reason) of a chat completion or an Anthropic message; else Nones."""
    if not isinstance(body, dict):
        return None, None
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        reason = choices[0].get("finish_reason")
        return (content if isinstance(content, str) else None), _str_or_none(reason)
    blocks = body.get("content")
    if isinstance(blocks, list):  # Anthropic Messages
        texts = [
            b["text"]
            for b in blocks
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        ]
        return ("".join(texts) if texts else None), _str_or_none(body.get("stop_reason"))
    return None, None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


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
    """(Re)build OUTPUT and OUTPUT.errors.jsonl from the journal; return their paths.

    OUTPUT's format follows its extension (`output_format`)."""
    output = Path(output)
    kind = output_format(output)
    with _closing(journal.rows(order=order, states=FINISHED)) as rows:
        if kind == "parquet":
            _atomic_parquet(output, (flat_record(row) for row in rows), journal=journal.path)
        elif kind in ("csv", "tsv"):
            with _atomic_text(output, journal=journal.path, newline="") as handle:
                delimiter = "\t" if kind == "tsv" else ","
                writer = csv.DictWriter(
                    handle, FLAT_COLUMNS, delimiter=delimiter, lineterminator="\n"
                )
                writer.writeheader()
                writer.writerows(flat_record(row) for row in rows)
        else:
            with _atomic_text(output, journal=journal.path) as handle:
                for row in rows:
                    line = json.dumps(output_record(row), ensure_ascii=False, separators=(",", ":"))
                    handle.write(line + "\n")
    errors = errors_path(output)
    with (
        _closing(journal.rows(order=order, states=("failed", "invalid"))) as failed,
        _atomic_text(errors, journal=journal.path) as handle,
    ):
        for row in failed:
            handle.write(json.dumps(error_record(row), ensure_ascii=False) + "\n")
    return output, errors


@contextlib.contextmanager
def _closing(rows: Iterator[sqlite3.Row]) -> Iterator[Iterator[sqlite3.Row]]:
    """The journal's rows, closed here rather than by the garbage collector after the
    journal is: a write that fails (a full disk) leaves them half read."""
    try:
        yield rows
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


@contextlib.contextmanager
def _atomic_file(path: Path, *, journal: Path) -> Iterator[int]:
    """A new file beside `path` (as a descriptor) renamed over it on success; on any
    failure the new file is removed, and an OSError (a full disk) becomes an
    OutputError naming `path`.

    Created with `_FILE_MODE` less the umask, as the journal is, rather than through
    `tempfile`, whose files are 0600 whatever the umask.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    except OSError as exc:
        raise _unwritable(path, journal, exc) from exc
    try:
        yield fd
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise _unwritable(path, journal, exc) from exc
        raise


@contextlib.contextmanager
def _atomic_text(path: Path, *, journal: Path, newline: str | None = None) -> Iterator[IO[str]]:
    with (
        _atomic_file(path, journal=journal) as fd,
        os.fdopen(fd, "w", encoding="utf-8", newline=newline) as handle,
    ):
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def _atomic_parquet(path: Path, records: Iterable[dict[str, Any]], *, journal: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise RuntimeError("Parquet output needs pyarrow: pip install pyarrow") from exc
    types = {"input_tokens": pa.int64(), "output_tokens": pa.int64(), "status_code": pa.int32()}
    schema = pa.schema([(name, types.get(name, pa.string())) for name in FLAT_COLUMNS])
    with _atomic_file(path, journal=journal) as fd, os.fdopen(fd, "wb") as handle:
        with pq.ParquetWriter(handle, schema) as writer:
            batch: list[dict[str, Any]] = []
            for record in records:
                batch.append(record)
                if len(batch) >= 10_000:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        handle.flush()
        os.fsync(handle.fileno())
