"""Read a job's journal (read-only) into arrays the plots and the header need.

The report is of the current input, as the output and `surge status` are: rows the
journal keeps for lines deleted from the input (their answers are kept, not shown) are
left out of every count and series, attempts included.

Everything is loaded once, as numpy arrays of a few columns, so a million-line job
costs tens of megabytes and the plots never touch SQLite. Times are wall-clock epoch
seconds in the journal; here they become seconds since the job's first run started.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt

from surge.jobs import JobInputError
from surge.jobs.runner import RUN_LIMITS_PREFIX

FloatArray = npt.NDArray[np.float64]

_SQLITE_MAGIC = b"SQLite format 3\x00"


# The limiter's bucket for each per-minute limit, and the `surge run` option that sets it.
LIMITS = (("RPM", "requests", "rpm"), ("TPM", "tokens", "tpm"),
          ("ITPM", "input_tokens", "itpm"), ("OTPM", "output_tokens", "otpm"))  # fmt: skip


@dataclass(frozen=True)
class Limit:
    """A per-minute limit a run ran under: the one given on the command line, or the
    one learned from the provider's headers (the lower, when both)."""

    name: str  # RPM, TPM, ITPM, OTPM
    per_minute: float | None  # what the run ran under; None: no such limit
    given: float | None  # what `surge run` was told
    recorded: bool  # the journal says what the run ran under (surge 0.x journals do not)

    def describe(self) -> str:
        """The limit in plain words.

        Example:
            >>> Limit("RPM", 3000.0, 6000.0, True).describe()
            "3,000/min (the server's headers; 6,000/min given)"
        """
        given = f"{self.given:,g}/min" if self.given else None
        if self.per_minute is None:
            if given:
                return f"{given} (given)"
            if self.recorded:
                return "none (not given, and the server's headers published none)"
            return "not set"
        value = f"{self.per_minute:,g}/min"
        if given is None:
            return f"{value} (from the server's headers)"
        if self.given is not None and self.per_minute < self.given:
            return f"{value} (the server's headers; {given} given)"
        return f"{value} (given)"


@dataclass(frozen=True)
class Run:
    """One `surge run` invocation, as the header lists it."""

    started: float  # seconds since the job's origin
    ended: float | None
    outcome: str | None
    settings: dict[str, Any]
    limits: dict[str, float | None] = field(default_factory=dict)
    """What the run's limiter enforced, by bucket (``requests``, ``tokens``...) and
    ``concurrency``: given or learned from headers. Empty when not recorded."""

    def limit(self, name: str) -> Limit:
        """The run's RPM, TPM, ITPM or OTPM limit."""
        for label, bucket, option in LIMITS:
            if label == name:
                given = self.settings.get(option)
                given = float(given) if isinstance(given, (int, float)) and given > 0 else None
                learned = self.limits.get(bucket)
                return Limit(label, given if learned is None else learned, given, bool(self.limits))
        raise KeyError(name)


@dataclass(frozen=True)
class JobData:
    """A job's journal as arrays; every time is seconds since ``origin``.

    ``starts``/``ends``/``latency``/``tokens``/``cost`` hold one entry per finished,
    non-cached item that recorded them; ``finished`` one per finished item.
    """

    journal: Path
    origin: float  # epoch seconds of the job's first run (or first item)
    span: float  # seconds from origin to the last thing that happened
    counts: dict[str, int]  # state -> items
    cached: int
    failed_by_reason: dict[str, int]  # final failed/invalid items by error_code
    retried_by_reason: dict[str, int]  # retried attempts by kind
    finished: FloatArray  # finished_at of done/failed items
    starts: FloatArray  # started_at, finished_at of non-cached items with both
    ends: FloatArray
    latency: FloatArray  # latency of the answering (last) attempt, non-cached items
    answered: FloatArray  # finished_at of those same items, in the same order
    token_times: FloatArray  # finished_at of items with tokens, with their tokens/cost
    input_tokens: FloatArray
    output_tokens: FloatArray
    cost: FloatArray
    token_cached: npt.NDArray[np.bool_]  # answered from the cache: no API tokens
    attempt_times: FloatArray  # `at` of each retried attempt
    attempt_is_429: npt.NDArray[np.bool_]
    runs: list[Run] = field(default_factory=list)
    left_out: int = 0
    """Rows the journal keeps for lines no longer in the input: not in any count or
    series above (nor in the output, nor in `surge status`)."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def settings(self) -> dict[str, Any]:
        """The latest run's settings: what `surge run` was told last."""
        return self.runs[-1].settings if self.runs else {}

    def limit(self, name: str) -> Limit:
        """The latest run's RPM, TPM, ITPM or OTPM limit (given or from the headers)."""
        return (self.runs[-1] if self.runs else Run(0.0, None, None, {})).limit(name)

    @property
    def concurrency(self) -> int | None:
        """The latest run's cap on requests in flight."""
        if not self.runs:
            return None
        run = self.runs[-1]
        value = run.limits.get("concurrency", run.settings.get("concurrency"))
        return int(value) if isinstance(value, (int, float)) and value > 0 else None


def resolve_journal(job: str | Path) -> Path:
    """The journal for ``job``: the journal itself, or the OUTPUT it lies beside.

    Example:
        >>> resolve_journal("out.jsonl")  # doctest: +SKIP
        PosixPath('out.jsonl.journal')
    """
    path = Path(job)
    if path.is_file() and _is_sqlite(path):
        return path
    beside = Path(f"{path}.journal")
    if beside.is_file():
        return beside
    if path.is_file():
        raise JobInputError(
            f"{path} is not a surge journal and there is no {beside}. "
            "HINT: pass the OUTPUT given to surge run, or its .journal file."
        )
    raise JobInputError(
        f"no journal at {path} or {beside}. HINT: pass the OUTPUT given to surge run."
    )


def load(journal: Path) -> JobData:
    """Read everything the report needs, without writing to the journal."""
    db = _connect_read_only(journal)
    try:
        return _load(db, journal)
    except sqlite3.DatabaseError as exc:
        raise JobInputError(f"cannot read journal {journal}: {exc}") from exc
    finally:
        db.close()


def safe_url(url: str | None) -> str | None:
    """A base URL fit to print: no user:password@ and no query (keys hide there).

    Example:
        >>> safe_url("https://user:pw@api.example.com/v1?key=s3cret")
        'https://api.example.com/v1'
    """
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC


def _connect_read_only(journal: Path) -> sqlite3.Connection:
    uri = journal.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True)
        db.execute("SELECT 1 FROM sqlite_master").fetchone()
        return db
    except sqlite3.Error:
        # A WAL journal in a read-only folder with no -shm file cannot be opened in
        # mode=ro; immutable skips the locking, fine for a finished job.
        try:
            return sqlite3.connect(f"{uri}?immutable=1", uri=True)
        except sqlite3.Error as exc:
            raise JobInputError(f"cannot open journal {journal}: {exc}") from exc


def _tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _floats(db: sqlite3.Connection, sql: str) -> FloatArray:
    """One numeric column as an array, streamed: no row tuples for big journals."""
    return np.fromiter((row[0] for row in db.execute(sql)), dtype=np.float64)


def _load(db: sqlite3.Connection, journal: Path) -> JobData:
    tables = _tables(db)
    if "items" not in tables:
        raise JobInputError(f"{journal} has no items table: not a surge journal.")
    # The current input's rows (see surge.jobs.journal); a journal from before
    # items.present held nothing else.
    columns = {row[1] for row in db.execute("PRAGMA table_info(items)")}
    current = "present = 1" if "present" in columns else "1"
    left_out = 0
    if "present" in columns:
        left_out = int(db.execute("SELECT COUNT(*) FROM items WHERE present = 0").fetchone()[0])
    counts = {
        str(s): int(n)
        for s, n in db.execute(f"SELECT state, COUNT(*) FROM items WHERE {current} GROUP BY 1")
    }
    cached = int(
        db.execute(f"SELECT COALESCE(SUM(cached), 0) FROM items WHERE {current}").fetchone()[0]
    )
    failed_by_reason = {
        str(reason): int(n)
        for reason, n in db.execute(
            "SELECT COALESCE(error_code, 'unknown'), COUNT(*) FROM items "
            f"WHERE state IN ('failed', 'invalid') AND {current} GROUP BY 1 ORDER BY 2 DESC, 1"
        )
    }
    # Attempts of the current input's rows only.
    of_current = "custom_id IN (SELECT custom_id FROM items WHERE present = 1)" if left_out else "1"
    limits = _run_limits(db) if "meta" in tables else {}
    runs_raw: list[tuple[float, float | None, dict[str, Any], str | None, dict[str, Any]]] = []
    if "runs" in tables:
        for run_id, started, ended, settings, outcome in db.execute(
            "SELECT rowid, started_at, ended_at, settings, outcome FROM runs ORDER BY rowid"
        ):
            parsed = _json_object(settings)
            runs_raw.append((started, ended, parsed, outcome, limits.get(int(run_id), {})))
    has_attempts = "attempts" in tables
    retried_by_reason: dict[str, int] = {}
    if has_attempts:
        retried_by_reason = {
            str(kind): int(n)
            for kind, n in db.execute(
                f"SELECT kind, COUNT(*) FROM attempts WHERE {of_current} "
                "GROUP BY 1 ORDER BY 2 DESC, 1"
            )
        }

    # The origin is the first run's start, else the first thing that happened; the
    # span runs to the last thing that happened.
    first, last = db.execute(
        f"SELECT MIN(COALESCE(started_at, finished_at)), MAX(finished_at) FROM items WHERE {current}"
    ).fetchone()
    bounds = [first, last]
    for started, ended, *_ in runs_raw:
        bounds += [started, ended]
    if has_attempts:
        bounds += list(
            db.execute(f"SELECT MIN(at), MAX(at) FROM attempts WHERE {of_current}").fetchone()
        )
    known = [float(b) for b in bounds if b is not None]
    origin = float(runs_raw[0][0]) if runs_raw else min(known, default=0.0)
    origin = min([origin, *known])
    span = max(known, default=origin) - origin

    live = f"{current} AND finished_at IS NOT NULL AND NOT cached"
    answered = f"{live} AND latency IS NOT NULL ORDER BY seq"
    timed = f"{live} AND started_at IS NOT NULL ORDER BY started_at, seq"
    tokens = f"{current} AND finished_at IS NOT NULL"
    tokens += (
        " AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL) ORDER BY finished_at, seq"
    )
    attempts_sql = f"SELECT {{}} FROM attempts WHERE {of_current} ORDER BY at"
    return JobData(
        journal=journal,
        origin=origin,
        span=span,
        counts=counts,
        cached=cached,
        failed_by_reason=failed_by_reason,
        retried_by_reason=retried_by_reason,
        finished=_floats(
            db, f"SELECT finished_at FROM items WHERE {current} AND finished_at IS NOT NULL"
        )
        - origin,
        starts=_floats(db, f"SELECT started_at FROM items WHERE {timed}") - origin,
        ends=_floats(db, f"SELECT finished_at FROM items WHERE {timed}") - origin,
        latency=_floats(db, f"SELECT latency FROM items WHERE {answered}"),
        answered=_floats(db, f"SELECT finished_at FROM items WHERE {answered}") - origin,
        token_times=_floats(db, f"SELECT finished_at FROM items WHERE {tokens}") - origin,
        input_tokens=_floats(db, f"SELECT COALESCE(input_tokens, 0) FROM items WHERE {tokens}"),
        output_tokens=_floats(db, f"SELECT COALESCE(output_tokens, 0) FROM items WHERE {tokens}"),
        cost=_floats(db, f"SELECT COALESCE(cost, 0) FROM items WHERE {tokens}"),
        token_cached=_floats(db, f"SELECT cached FROM items WHERE {tokens}").astype(np.bool_),
        attempt_times=(_floats(db, attempts_sql.format("at")) if has_attempts else _empty())
        - origin,
        attempt_is_429=(
            _floats(
                db, attempts_sql.format("kind = 'rate_limited' OR IFNULL(status_code, 0) = 429")
            )
            if has_attempts
            else _empty()
        ).astype(np.bool_),
        runs=[
            Run(
                started=float(s - origin),
                ended=None if e is None else float(e - origin),
                outcome=o,
                settings=st,
                limits={k: v for k, v in lim.items() if isinstance(v, (int, float))},
            )
            for s, e, st, o, lim in runs_raw
        ],
        left_out=left_out,
    )


def _json_object(text: Any) -> dict[str, Any]:
    try:
        parsed = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _run_limits(db: sqlite3.Connection) -> dict[int, dict[str, Any]]:
    """Run id -> the limits `surge run` recorded for it (see `surge.jobs.runner`)."""
    found: dict[int, dict[str, Any]] = {}
    rows = db.execute(
        "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?",
        (len(RUN_LIMITS_PREFIX), RUN_LIMITS_PREFIX),
    )
    for key, value in rows:
        run_id = str(key)[len(RUN_LIMITS_PREFIX) :]
        if run_id.isdigit():
            found[int(run_id)] = _json_object(value)
    return found


def _empty() -> FloatArray:
    return np.zeros(0, dtype=np.float64)
