"""The journal: a batch job's source of truth, in SQLite (WAL mode) beside the output.

Every input line becomes a row before the first request is sent. Each result is
committed within one event-loop tick of its arrival: the first write of a tick opens a
transaction and schedules its commit with `loop.call_soon`, so every result recorded in
that tick shares one commit (a group commit). After a `kill -9`, what was received is in
the journal; only what was still in flight is asked for again.

A rerun reads the same input, checks that no id changed its request, and sends only
what is not finished. The output is the current input: a line deleted from the input is
left out of the output, while its row (and any answer paid for) stays in the journal,
so restoring the line later costs nothing. Output files are views of the journal and
can be rebuilt from it at any time.

One run at a time: an advisory lock (`flock`) on JOURNAL.lock, which names its holder
(pid, host, start time), refuses a second run in plain words. The operating system
drops the lock when its holder dies, so a `kill -9` never blocks the rerun.

Anything SQLite reports (a damaged file, a full disk) comes out as a `JournalError`
naming the journal and saying how to go on, never as a bare `sqlite3` traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import json
import os
import socket
import sqlite3
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from surge.jobs._model import InputError, JobInputError, Request
from surge.jobs._urls import without_credentials

SCHEMA_VERSION = 2  # 2: items.present, so the output follows the current input

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY,          -- first seen order: dispatch order
    custom_id TEXT NOT NULL UNIQUE,
    line INTEGER NOT NULL,            -- line in the latest input: output order
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
    latency REAL,
    present INTEGER NOT NULL DEFAULT 1  -- in the latest input (0: kept, not in the output)
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

RECOVER_HINT = (
    "HINT: rerun the same command with --recover: surge moves the damaged journal aside, "
    "rebuilds it from the input, counts every answer the output file already holds as "
    "done, and sends only the rest."
)


class JournalError(JobInputError):
    """The journal cannot be used as it is: damaged, on a full disk, or held by another
    run. The message names the file and says how to go on."""


def explain(path: Path, exc: sqlite3.Error) -> JournalError:
    """SQLite's complaint about PATH in plain words, with what to do about it."""
    text = str(exc)
    if "full" in text:  # SQLITE_FULL: "database or disk is full"
        return JournalError(
            f"{path}: no space left to write the journal ({text}). HINT: free some disk "
            "space, then rerun the same command; every result committed so far is kept."
        )
    if "I/O" in text:
        return JournalError(
            f"{path}: the disk failed to read or write the journal ({text}). HINT: check "
            "free space and the disk, then rerun the same command; if it fails again, "
            "the journal is damaged: " + RECOVER_HINT.removeprefix("HINT: ")
        )
    if "locked" in text or "busy" in text:
        return JournalError(
            f"{path} is locked by another program ({text}). HINT: close whatever has it "
            "open (a second surge run, an sqlite3 shell) and rerun the same command."
        )
    if "unable to open" in text or "readonly" in text or "read-only" in text:
        return JournalError(
            f"cannot open journal {path} ({text}). HINT: check that its folder exists and "
            "is writable, or pass --journal PATH."
        )
    if "no such table" in text or "no such column" in text:
        return JournalError(
            f"{path} is not a surge journal ({text}). HINT: pass the OUTPUT given to "
            "surge run, or --journal with the journal it wrote."
        )
    return JournalError(
        f"{path} is damaged and cannot be read as a surge journal ({text}). " + RECOVER_HINT
    )


_F = TypeVar("_F", bound=Callable[..., Any])


def _plain_errors(method: _F) -> _F:
    """Turn sqlite3 errors raised by a Journal method into a JournalError."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def reading(self: Journal, *args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                raise self._failed(exc) from exc

        return cast(_F, reading)

    @functools.wraps(method)
    def calling(self: Journal, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    return cast(_F, calling)


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


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a journal: written into JOURNAL.lock by the run that took it."""

    pid: int
    host: str
    started_at: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started_at))
        return f"pid {self.pid} on {self.host}, started {when}"

    def alive(self) -> bool | None:
        """Whether the holder still runs (None: on another host, cannot tell)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def lock_path(journal: str | Path) -> Path:
    return Path(f"{journal}.lock")


def lock_holder(journal: str | Path) -> LockHolder | None:
    """The run holding JOURNAL's lock, if any (read without taking the lock)."""
    path = lock_path(journal)
    try:
        data = json.loads(path.read_text())
        holder = LockHolder(int(data["pid"]), str(data["host"]), float(data["started_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None if holder.alive() is False else holder


class _RunLock:
    """One run per journal: an exclusive flock on JOURNAL.lock, released by the OS when
    the holder dies. The file is removed (while still locked) on a clean exit; a run
    that locked a file just removed this way sees it and locks the new one instead."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.path = lock_path(journal)
        self._fd: int | None = None

    def acquire(self) -> None:
        if sys.platform == "win32":  # no flock: one run at a time is up to the user
            return
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise JournalError(
                    f"cannot create the lock file {self.path} ({exc.strerror}). HINT: check "
                    "that the journal's folder exists and is writable, or pass --journal PATH."
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = lock_holder(self.journal)
                who = holder.describe() if holder else "another process"
                raise JournalError(
                    f"{self.journal} is in use by another surge run ({who}). HINT: let it "
                    "finish (`surge status` on its output shows how far it is), or stop it "
                    "(Ctrl-C in its terminal"
                    + (f", or `kill {holder.pid}`" if holder else "")
                    + ") and rerun this command to resume; nothing it finished is lost."
                ) from None
            except OSError as exc:  # e.g. ENOLCK on a network file system without locks
                os.close(fd)
                raise JournalError(
                    f"cannot lock {self.path} ({exc.strerror}). HINT: put the journal on a "
                    "local disk with --journal PATH."
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its holder finished and removed it: lock the one there now
        holder_record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": time.time(),
        }
        with contextlib.suppress(OSError):  # a full disk: the lock holds, unnamed
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(holder_record).encode())
        self._fd = fd
        # A journal dropped without close() (an error half-way through opening a job)
        # lets go of the lock when it is collected, not only when the process ends.
        self._collected = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # before unlocking: nobody may lock a file about to vanish
        self._collected.detach()
        os.close(self._fd)
        self._fd = None


def _set_aside(path: Path) -> Path:
    """Rename a damaged journal (and its WAL files) to PATH.damaged[.N]; return the new name."""
    target = Path(f"{path}.damaged")
    n = 1
    while target.exists():
        n += 1
        target = Path(f"{path}.damaged.{n}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, f"{target}{suffix}")
    return target


def _damaged(path: Path) -> bool:
    """Whether PATH cannot be used as a journal: unreadable, or failing SQLite's check."""
    try:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            check = db.execute("PRAGMA quick_check").fetchall()
            db.execute("SELECT COUNT(*) FROM items").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return True
    return check != [("ok",)]


class Journal:
    """One job's journal. Not thread-safe: use it from the event loop's thread.

    `readonly=True` opens it for looking only (`surge status`): no lock, no writes, so
    it works beside the run that holds it. `recover=True` first moves a damaged journal
    aside (to JOURNAL.damaged, kept for inspection) and starts a fresh one there;
    `moved_aside` then names where the old one went.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False, recover: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.moved_aside: Path | None = None
        self._lock = _RunLock(self.path)
        self._closed = False
        self._in_transaction = False
        self._commit_loop: asyncio.AbstractEventLoop | None = None
        self._failure: JournalError | None = None
        self._present = "present = 1"
        if readonly:
            self._db = self._open_readonly()
            return
        self._lock.acquire()
        try:
            if recover and self.path.exists() and _damaged(self.path):
                self.moved_aside = _set_aside(self.path)
            self._db = self._open()
        except BaseException:
            self._lock.release()
            raise

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise explain(self.path, exc) from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: committed survives a process crash
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = None if row is None else int(row[0])
            if version == 1:  # before items.present: every row was in the input
                db.execute("ALTER TABLE items ADD COLUMN present INTEGER NOT NULL DEFAULT 1")
            elif version not in (None, SCHEMA_VERSION):
                db.close()
                raise JournalError(
                    f"{self.path}: journal schema {version}, this surge writes "
                    f"{SCHEMA_VERSION}. HINT: finish the job with the surge that started it, "
                    "or write to a new output to start afresh."
                )
            if version != SCHEMA_VERSION:
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        except sqlite3.Error as exc:
            db.close()
            raise explain(self.path, exc) from exc
        return db

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise JournalError(
                f"no journal at {self.path}. HINT: pass the OUTPUT given to surge run."
            )
        try:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None and int(row[0]) == 1:
                self._present = "1"  # written before items.present existed
        except sqlite3.Error as exc:
            raise explain(self.path, exc) from exc
        return db

    # -- meta --------------------------------------------------------------------------

    @_plain_errors
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @_plain_errors
    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- ingest ------------------------------------------------------------------------

    @_plain_errors
    def ingest(self, records: Iterable[Request | InputError], *, source: str) -> int:
        """Load the input: new lines become pending rows; known lines are checked.

        Raises JobInputError, before anything is sent, for a custom_id used twice in
        the input or one whose request changed since the journal recorded it. Rows no
        longer in the input are kept but left out of everything else (pending, outputs,
        summary) until a later input holds them again. Returns the number of lines read.
        """
        self.commit()
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
                what = (
                    "stdin holds other requests than the job this journal records"
                    if source == "<stdin>"
                    else "the input changed since this job started"
                )
                raise JobInputError(
                    f"{source}: {what}: {listed} now ask for something else than the "
                    f"journal {self.path} recorded. HINT: write to a new output (-o) to run "
                    "it as a new job, or delete the journal and rerun with --overwrite to "
                    "start afresh; surge never mixes two versions of a job."
                )
            # A malformed line was never sent: once fixed (or gone) it is simply replaced.
            db.execute(
                "DELETE FROM items WHERE state = 'invalid' AND custom_id NOT IN "
                "(SELECT custom_id FROM incoming WHERE error IS NOT NULL)"
            )
            # The output is the current input: rows it no longer holds step out (their
            # answers stay, should the line come back); the rest take their new line.
            db.execute(
                "UPDATE items SET present = 0 WHERE present = 1 AND custom_id NOT IN "
                "(SELECT custom_id FROM incoming)"
            )
            db.execute(
                "UPDATE items SET present = 1, line = (SELECT n.line FROM incoming n "
                "WHERE n.custom_id = items.custom_id) WHERE EXISTS (SELECT 1 FROM incoming n "
                "WHERE n.custom_id = items.custom_id AND (items.present = 0 OR n.line != items.line))"
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

    @_plain_errors
    def pending(self, *, chunk: int = 1000) -> Iterator[PendingItem]:
        """Pending items in input order, read in chunks so memory stays flat."""
        after = -1
        while True:
            rows = self._db.execute(
                "SELECT seq, custom_id, line, url, body FROM items "
                f"WHERE state = 'pending' AND {self._present} AND seq > ? ORDER BY seq LIMIT ?",
                (after, chunk),
            ).fetchall()
            if not rows:
                return
            for seq, custom_id, line, url, body in rows:
                yield PendingItem(seq, custom_id, line, url, json.loads(body))
            after = rows[-1][0]

    @_plain_errors
    def pending_models(self) -> set[str]:
        """The models pending requests name, without reading them all back."""
        rows = self._db.execute(
            "SELECT DISTINCT COALESCE(json_extract(body, '$.model'), '') FROM items "
            f"WHERE state = 'pending' AND {self._present}"
        )
        return {str(model) for (model,) in rows}

    @_plain_errors
    def count(self, state: str | None = None) -> int:
        if state is None:
            row = self._db.execute(f"SELECT COUNT(*) FROM items WHERE {self._present}")
        else:
            row = self._db.execute(
                f"SELECT COUNT(*) FROM items WHERE state = ? AND {self._present}", (state,)
            )
        return int(row.fetchone()[0])

    @_plain_errors
    def summary(self) -> JobSummary:
        """The current input's items: rows no longer in the input are not counted."""
        counts = dict(
            self._db.execute(
                f"SELECT state, COUNT(*) FROM items WHERE {self._present} GROUP BY state"
            ).fetchall()
        )
        reasons = dict(
            self._db.execute(
                "SELECT COALESCE(error_code, 'unknown'), COUNT(*) FROM items "
                f"WHERE state IN ('failed', 'invalid') AND {self._present} GROUP BY 1 ORDER BY 2 DESC"
            ).fetchall()
        )
        tokens_in, tokens_out, cost, cached, unpriced = self._db.execute(
            "SELECT COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
            "COALESCE(SUM(cost), 0), COALESCE(SUM(cached), 0), "
            "COUNT(*) FILTER (WHERE state = 'done' AND cost IS NULL) "
            f"FROM items WHERE {self._present}"
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

    @_plain_errors
    def rows(
        self, *, order: str = "input", states: tuple[str, ...] | None = None
    ) -> Iterator[sqlite3.Row]:
        """Every row of the current input, for writing outputs: input order or
        completion order."""
        where = f"WHERE {self._present}"
        params: tuple[str, ...] = ()
        if states:
            where += f" AND state IN ({', '.join('?' for _ in states)})"
            params = states
        # Input order is line order: a line fixed on a rerun keeps its place.
        order_by = "line, seq" if order == "input" else "finished_at IS NULL, finished_at, seq"
        cursor = self._db.cursor()
        cursor.row_factory = sqlite3.Row
        yield from cursor.execute(f"SELECT * FROM items {where} ORDER BY {order_by}", params)

    @_plain_errors
    def attempts(self) -> list[tuple[float, str, str, int | None]]:
        return self._db.execute(
            "SELECT at, custom_id, kind, status_code FROM attempts ORDER BY at"
        ).fetchall()

    # -- writing -----------------------------------------------------------------------

    @_plain_errors
    def record(self, outcome: Outcome) -> None:
        """Record a finished item; committed at the end of this event-loop tick."""
        self._update(outcome, "")

    @_plain_errors
    def adopt(self, outcome: Outcome) -> bool:
        """Record an answer found elsewhere (the output file, on --recover) for an item of
        the current input that is still pending; True if it was."""
        return self._update(outcome, f" AND state = 'pending' AND {self._present}")

    def _update(self, outcome: Outcome, condition: str) -> bool:
        self._begin()
        response = (
            None
            if outcome.response is None
            else json.dumps(outcome.response, separators=(",", ":"))
        )
        cursor = self._db.execute(
            "UPDATE items SET state = ?, attempts = attempts + ?, status_code = ?, request_id = ?, "
            "response = ?, error_code = ?, error = ?, input_tokens = ?, output_tokens = ?, cost = ?, "
            f"cached = ?, started_at = ?, finished_at = ?, latency = ? WHERE custom_id = ?{condition}",
            (
                outcome.state, outcome.attempts, outcome.status_code, outcome.request_id, response,
                outcome.error_code, outcome.error, outcome.input_tokens, outcome.output_tokens,
                outcome.cost, int(outcome.cached), outcome.started_at, outcome.finished_at,
                outcome.latency, outcome.custom_id,
            ),
        )  # fmt: skip
        self._wrote()
        return cursor.rowcount == 1

    @_plain_errors
    def record_attempt(
        self, at: float, custom_id: str, kind: str, status_code: int | None, message: str
    ) -> None:
        self._begin()
        self._db.execute(
            "INSERT INTO attempts VALUES (?, ?, ?, ?, ?)",
            (at, custom_id, kind, status_code, message[:500]),
        )
        self._wrote()

    @_plain_errors
    def retry_failed(self) -> int:
        """Put failed items back to pending (invalid input lines stay as they are)."""
        self.commit()
        cursor = self._db.execute(
            "UPDATE items SET state = 'pending', error = NULL, error_code = NULL "
            f"WHERE state = 'failed' AND {self._present}"
        )
        return cursor.rowcount

    @_plain_errors
    def start_run(self, settings: dict[str, Any]) -> int:
        self.commit()
        if settings.get("base_url"):  # a user:password@ or ?api-key= stays out of the file
            settings = {**settings, "base_url": without_credentials(settings["base_url"])}
        cursor = self._db.execute(
            "INSERT INTO runs (started_at, settings) VALUES (?, ?)",
            (time.time(), json.dumps(settings)),
        )
        return int(cursor.lastrowid or 0)

    @_plain_errors
    def end_run(self, run_id: int, outcome: str) -> None:
        self.commit()
        self._db.execute(
            "UPDATE runs SET ended_at = ?, outcome = ? WHERE rowid = ?",
            (time.time(), outcome, run_id),
        )

    @_plain_errors
    def runs(self) -> list[tuple[float, float | None, dict[str, Any], str | None]]:
        rows = self._db.execute(
            "SELECT started_at, ended_at, settings, outcome FROM runs ORDER BY rowid"
        ).fetchall()
        return [(s, e, json.loads(settings), o) for s, e, settings, o in rows]

    def commit(self) -> None:
        """Commit what is written so far. Raises the JournalError of a commit that failed
        in the background (at the end of a tick), so a full disk stops the job."""
        if self._failure is not None:
            raise self._failure
        if self._in_transaction:
            self._in_transaction = False
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._failure = explain(self.path, exc)
                raise self._failure from exc

    def close(self) -> None:
        """Commit and let go of the journal and its lock (also after a failure)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._failure is None and not self.readonly:
                self.commit()
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._lock.release()

    def _failed(self, exc: sqlite3.Error) -> JournalError:
        """The error to raise; one inside an open transaction also ends the journal's
        use (SQLite may have rolled the batch back), so later writes raise it too."""
        error = explain(self.path, exc)
        if self._in_transaction:
            self._failure = error
        return error

    def _begin(self) -> None:
        if self._failure is not None:
            raise self._failure
        if not self._in_transaction:
            self._db.execute("BEGIN")
            self._in_transaction = True

    def _wrote(self) -> None:
        """Group commit: the first write of a tick schedules one commit for the tick."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.commit()  # no event loop: nothing to group with
            return
        if self._commit_loop is loop:
            return  # this tick's commit is already scheduled
        # (A commit scheduled on a loop that has since closed never ran: schedule anew.)
        self._commit_loop = loop
        loop.call_soon(self._commit_tick)

    def _commit_tick(self) -> None:
        self._commit_loop = None
        if self._closed:
            return
        # A failure is kept in self._failure and raised by the next write or commit:
        # raising here would only reach the loop's exception handler.
        with contextlib.suppress(JournalError):
            self.commit()
