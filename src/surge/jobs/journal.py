"""The journal: a batch job's source of truth, in SQLite (WAL mode) beside the output.

Every input line becomes a row before the first request is sent; results are written
as they arrive, committed in small transactions (every 50 results or 1 s, whichever
comes first). A rerun reads the same input, checks that no id changed its request,
and sends only what is not finished, so nothing already paid for is asked for again.
Output files are views of the journal and can be rebuilt from it at any time.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surge.jobs._model import InputError, JobInputError, Request

SCHEMA_VERSION = 1
COMMIT_EVERY = 50
COMMIT_INTERVAL = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY,          -- position in the input: output order
    custom_id TEXT NOT NULL UNIQUE,
    line INTEGER NOT NULL,
    url TEXT,
    body_hash TEXT,
    body TEXT,
    state TEXT NOT NULL,              -- pending | done | failed | invalid
    attempts INTEGER NOT NULL DEFAULT 0,
    status_code INTEGER,
    request_id TEXT,
    response TEXT,
    error_code TEXT,
    error TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cost REAL,
    cached INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    latency REAL
);
CREATE INDEX IF NOT EXISTS items_state ON items (state, seq);
-- One row per failed attempt that was retried (429s, 5xx, timeouts), for the report.
CREATE TABLE IF NOT EXISTS attempts (
    at REAL NOT NULL,
    custom_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    status_code INTEGER,
    message TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    started_at REAL NOT NULL,
    ended_at REAL,
    settings TEXT NOT NULL,
    outcome TEXT
);
"""


def body_hash(url: str, body: dict[str, Any]) -> str:
    """A stable fingerprint of a request: endpoint plus canonical JSON body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{url}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PendingItem:
    seq: int
    custom_id: str
    line: int
    url: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to record for one finished item."""

    custom_id: str
    state: str  # done | failed
    attempts: int
    status_code: int | None = None
    request_id: str | None = None
    response: Any = None
    error_code: str | None = None
    error: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None
    cached: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    latency: float | None = None


@dataclass(frozen=True, slots=True)
class JobSummary:
    total: int
    done: int
    failed: int
    invalid: int
    pending: int
    failed_by_reason: dict[str, int]
    input_tokens: int
    output_tokens: int
    cost: float
    cached: int
    unpriced: int = 0
    """Done items whose model had no known price: `cost` leaves them out."""


class Journal:
    """One job's journal. Not thread-safe: use it from the event loop's thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise JobInputError(f"cannot open journal {self.path}: {exc}") from exc
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._pending_writes = 0
        self._last_commit = time.monotonic()
        self._in_transaction = False
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        elif int(version) != SCHEMA_VERSION:
            raise JobInputError(
                f"{self.path}: journal schema {version}, this surge writes {SCHEMA_VERSION}. "
                "HINT: finish the job with the surge that started it, or start afresh."
            )

    # -- meta --------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- ingest ------------------------------------------------------------------------

    def ingest(self, records: Iterable[Request | InputError], *, source: str) -> int:
        """Load the input: new lines become pending rows; known lines are checked.

        Raises JobInputError, before anything is sent, for a custom_id used twice in
        the input or one whose request changed since the journal recorded it. Returns
        the number of lines read.
        """
        db = self._db
        db.execute("DROP TABLE IF EXISTS temp.incoming")
        db.execute(
            "CREATE TEMP TABLE incoming (seq INTEGER, custom_id TEXT, line INTEGER, url TEXT, "
            "body_hash TEXT, body TEXT, error TEXT)"
        )
        count = 0

        def rows() -> Iterator[tuple[Any, ...]]:
            nonlocal count
            for record in records:
                seq = count
                count += 1
                if isinstance(record, InputError):
                    custom_id = record.custom_id or f"invalid-line-{record.line}"
                    yield (seq, custom_id, record.line, None, None, None, str(record))
                else:
                    body = json.dumps(record.body, separators=(",", ":"), ensure_ascii=False)
                    digest = body_hash(record.url, record.body)
                    yield (seq, record.custom_id, record.line, record.url, digest, body, None)

        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO incoming VALUES (?, ?, ?, ?, ?, ?, ?)", rows())
            db.execute("CREATE INDEX temp.incoming_id ON incoming (custom_id)")
            duplicates = db.execute(
                "SELECT custom_id, GROUP_CONCAT(line, ', ') FROM incoming GROUP BY custom_id "
                "HAVING COUNT(*) > 1 LIMIT 5"
            ).fetchall()
            if duplicates:
                listed = "; ".join(f"{cid!r} on lines {lines}" for cid, lines in duplicates)
                raise JobInputError(
                    f"{source}: duplicate custom_id: {listed}. HINT: every line needs its "
                    "own id; drop the id field to have surge derive one per line."
                )
            changed = db.execute(
                "SELECT n.custom_id, n.line FROM incoming n JOIN items i USING (custom_id) "
                "WHERE i.state != 'invalid' AND (i.body_hash IS NOT n.body_hash) LIMIT 5"
            ).fetchall()
            if changed:
                listed = ", ".join(f"{cid!r} (line {line})" for cid, line in changed)
                raise JobInputError(
                    f"{source}: the input changed since this job started: {listed} now "
                    f"ask for something else than the journal {self.path} recorded. "
                    "HINT: write to a new output (or delete the journal) to start afresh; "
                    "surge never mixes two versions of a job."
                )
            # A malformed line was never sent: once fixed (or gone) it is simply replaced.
            db.execute(
                "DELETE FROM items WHERE state = 'invalid' AND custom_id NOT IN "
                "(SELECT custom_id FROM incoming WHERE error IS NOT NULL)"
            )
            db.execute(
                "INSERT INTO items (seq, custom_id, line, url, body_hash, body, state, error, "
                "error_code) SELECT seq + (SELECT COALESCE(MAX(seq) + 1, 0) FROM items), "
                "custom_id, line, url, body_hash, body, "
                "CASE WHEN error IS NULL THEN 'pending' ELSE 'invalid' END, error, "
                "CASE WHEN error IS NULL THEN NULL ELSE 'invalid_input' END "
                "FROM incoming WHERE custom_id NOT IN (SELECT custom_id FROM items) ORDER BY seq"
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.execute("DROP TABLE IF EXISTS temp.incoming")
        return count

    # -- reading -----------------------------------------------------------------------

    def pending(self, *, chunk: int = 1000) -> Iterator[PendingItem]:
        """Pending items in input order, read in chunks so memory stays flat."""
        after = -1
        while True:
            rows = self._db.execute(
                "SELECT seq, custom_id, line, url, body FROM items "
                "WHERE state = 'pending' AND seq > ? ORDER BY seq LIMIT ?",
                (after, chunk),
            ).fetchall()
            if not rows:
                return
            for seq, custom_id, line, url, body in rows:
                yield PendingItem(seq, custom_id, line, url, json.loads(body))
            after = rows[-1][0]

    def pending_models(self) -> set[str]:
        """The models pending requests name, without reading them all back."""
        rows = self._db.execute(
            "SELECT DISTINCT COALESCE(json_extract(body, '$.model'), '') FROM items "
            "WHERE state = 'pending'"
        )
        return {str(model) for (model,) in rows}

    def count(self, state: str | None = None) -> int:
        if state is None:
            return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        row = self._db.execute("SELECT COUNT(*) FROM items WHERE state = ?", (state,))
        return int(row.fetchone()[0])

    def summary(self) -> JobSummary:
        counts = dict(
            self._db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall()
        )
        reasons = dict(
            self._db.execute(
                "SELECT COALESCE(error_code, 'unknown'), COUNT(*) FROM items "
                "WHERE state IN ('failed', 'invalid') GROUP BY 1 ORDER BY 2 DESC"
            ).fetchall()
        )
        tokens_in, tokens_out, cost, cached, unpriced = self._db.execute(
            "SELECT COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
            "COALESCE(SUM(cost), 0), COALESCE(SUM(cached), 0), "
            "COUNT(*) FILTER (WHERE state = 'done' AND cost IS NULL) FROM items"
        ).fetchone()
        return JobSummary(
            total=sum(counts.values()),
            done=counts.get("done", 0),
            failed=counts.get("failed", 0),
            invalid=counts.get("invalid", 0),
            pending=counts.get("pending", 0),
            failed_by_reason=reasons,
            input_tokens=int(tokens_in),
            output_tokens=int(tokens_out),
            cost=float(cost),
            cached=int(cached),
            unpriced=int(unpriced),
        )

    def rows(
        self, *, order: str = "input", states: tuple[str, ...] | None = None
    ) -> Iterator[sqlite3.Row]:
        """Every finished row, for writing outputs: input order or completion order."""
        where = ""
        params: tuple[str, ...] = ()
        if states:
            where = f"WHERE state IN ({', '.join('?' for _ in states)})"
            params = states
        # Input order is line order: a line fixed on a rerun keeps its place.
        order_by = "line, seq" if order == "input" else "finished_at IS NULL, finished_at, seq"
        cursor = self._db.cursor()
        cursor.row_factory = sqlite3.Row
        yield from cursor.execute(f"SELECT * FROM items {where} ORDER BY {order_by}", params)

    def attempts(self) -> list[tuple[float, str, str, int | None]]:
        return self._db.execute(
            "SELECT at, custom_id, kind, status_code FROM attempts ORDER BY at"
        ).fetchall()

    # -- writing -----------------------------------------------------------------------

    def record(self, outcome: Outcome) -> None:
        """Record a finished item; committed with the next small transaction."""
        self._begin()
        response = (
            None
            if outcome.response is None
            else json.dumps(outcome.response, separators=(",", ":"))
        )
        self._db.execute(
            "UPDATE items SET state = ?, attempts = attempts + ?, status_code = ?, request_id = ?, "
            "response = ?, error_code = ?, error = ?, input_tokens = ?, output_tokens = ?, cost = ?, "
            "cached = ?, started_at = ?, finished_at = ?, latency = ? WHERE custom_id = ?",
            (
                outcome.state, outcome.attempts, outcome.status_code, outcome.request_id, response,
                outcome.error_code, outcome.error, outcome.input_tokens, outcome.output_tokens,
                outcome.cost, int(outcome.cached), outcome.started_at, outcome.finished_at,
                outcome.latency, outcome.custom_id,
            ),
        )  # fmt: skip
        self._wrote()

    def record_attempt(
        self, at: float, custom_id: str, kind: str, status_code: int | None, message: str
    ) -> None:
        self._begin()
        self._db.execute(
            "INSERT INTO attempts VALUES (?, ?, ?, ?, ?)",
            (at, custom_id, kind, status_code, message[:500]),
        )
        self._wrote()

    def retry_failed(self) -> int:
        """Put failed items back to pending (invalid input lines stay as they are)."""
        self.commit()
        cursor = self._db.execute(
            "UPDATE items SET state = 'pending', error = NULL, error_code = NULL WHERE state = 'failed'"
        )
        return cursor.rowcount

    def start_run(self, settings: dict[str, Any]) -> int:
        self.commit()
        cursor = self._db.execute(
            "INSERT INTO runs (started_at, settings) VALUES (?, ?)",
            (time.time(), json.dumps(settings)),
        )
        return int(cursor.lastrowid or 0)

    def end_run(self, run_id: int, outcome: str) -> None:
        self.commit()
        self._db.execute(
            "UPDATE runs SET ended_at = ?, outcome = ? WHERE rowid = ?",
            (time.time(), outcome, run_id),
        )

    def runs(self) -> list[tuple[float, float | None, dict[str, Any], str | None]]:
        rows = self._db.execute(
            "SELECT started_at, ended_at, settings, outcome FROM runs ORDER BY rowid"
        ).fetchall()
        return [(s, e, json.loads(settings), o) for s, e, settings, o in rows]

    def maybe_commit(self) -> None:
        """Commit if the batch is full or a second has passed (also call from a timer)."""
        if self._in_transaction and (
            self._pending_writes >= COMMIT_EVERY
            or time.monotonic() - self._last_commit >= COMMIT_INTERVAL
        ):
            self.commit()

    def commit(self) -> None:
        if self._in_transaction:
            self._db.execute("COMMIT")
            self._in_transaction = False
        self._pending_writes = 0
        self._last_commit = time.monotonic()

    def close(self) -> None:
        self.commit()
        self._db.close()

    def _begin(self) -> None:
        if not self._in_transaction:
            self._db.execute("BEGIN")
            self._in_transaction = True

    def _wrote(self) -> None:
        self._pending_writes += 1
        self.maybe_commit()
