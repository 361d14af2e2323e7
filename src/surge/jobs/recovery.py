"""`surge run --recover`: rebuild a job's journal from the answers its output holds.

The journal is the job's source of truth, but the output file is a full copy of every
answer it had when the output was last written. When the journal is lost or damaged
(a full disk, a truncated copy), `--recover` moves it aside (`Journal(recover=True)`),
reads the input into a fresh one, and counts each successful answer the output holds
as done, so only the rest is sent. Failed lines in the output are sent again.

It trusts that the output came from this input: the output holds each answer under its
custom_id, not the request it answered.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from surge._feedback import extract_usage
from surge.jobs._model import JobInputError
from surge.jobs.journal import Journal, Outcome

Answer = tuple[str, str | None, dict[str, Any]]  # custom_id, request_id, response body


def read_answers(output: Path) -> Iterator[Answer]:
    """The successful answers in an output file surge wrote: JSONL (the Batch output
    format), or CSV, TSV and Parquet (rows with `custom_id` and the raw `body`)."""
    suffix = output.suffix.lower()
    if suffix in (".parquet", ".pq"):
        yield from _table_answers(_parquet_rows(output))
    elif suffix in (".csv", ".tsv"):
        # A raw body (an embedding, a long reply) can pass csv's default 128 KiB field.
        csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
        with output.open(newline="", encoding="utf-8") as handle:
            delimiter = "\t" if suffix == ".tsv" else ","
            yield from _table_answers(csv.DictReader(handle, delimiter=delimiter))
    else:
        with output.open(encoding="utf-8") as handle:
            for text in handle:
                try:
                    line = json.loads(text)
                    response = line["response"]
                    if line.get("error") is None and response["status_code"] == 200:
                        body = response["body"]
                        if isinstance(body, dict):
                            yield str(line["custom_id"]), response.get("request_id"), body
                except (ValueError, KeyError, TypeError):
                    continue  # a cut or foreign line: that item is simply sent again


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
        yield from batch.to_pylist()


def _table_answers(rows: Iterator[dict[str, Any]]) -> Iterator[Answer]:
    """Rows with custom_id and the raw response `body` (JSON text); a status_code column,
    where there is one, must say 200."""
    for row in rows:
        custom_id, raw = row.get("custom_id"), row.get("body")
        status = row.get("status_code")
        if not custom_id or not raw or (status not in (None, "") and int(status) != 200):
            continue
        try:
            body = json.loads(raw)
        except ValueError:
            continue
        if isinstance(body, dict):
            yield str(custom_id), row.get("request_id") or None, body


def recover_from_output(
    journal: Journal,
    output: str | Path,
    *,
    cost_of: Callable[[dict[str, Any], int, int], float | None],
    note: Callable[[str], None],
) -> int:
    """Count the answers OUTPUT holds as done for the journal's pending items; return
    how many. `cost_of(body, input_tokens, output_tokens)` prices each one again."""
    output = Path(output)
    if journal.moved_aside is not None:
        note(f"The damaged journal was moved aside to {journal.moved_aside}.")
    if not output.exists():
        note(f"--recover: there is no {output} to recover answers from; running as usual.")
        return 0
    now = time.time()
    adopted = 0
    try:
        for custom_id, request_id, body in read_answers(output):
            usage = extract_usage(body)
            tokens_in = usage.input_tokens if usage else 0
            tokens_out = usage.output_tokens if usage else 0
            outcome = Outcome(
                custom_id=custom_id, state="done", attempts=0, status_code=200,
                request_id=request_id, response=body, input_tokens=tokens_in,
                output_tokens=tokens_out, cost=cost_of(body, tokens_in, tokens_out),
                started_at=now, finished_at=now,
            )  # fmt: skip
            adopted += journal.adopt(outcome)
    except (OSError, ValueError, ImportError, csv.Error) as exc:  # ValueError: pyarrow, UTF-8
        raise JobInputError(
            f"--recover cannot read {output}: {exc}. HINT: rerun without --recover to send "
            "every line again, or restore the output file first."
        ) from exc
    journal.commit()
    note(f"Recovered {adopted:,} answers from {output}: they will not be asked for again.")
    return adopted
