"""A response cache shared across jobs: an identical request to the same server is not
paid for twice.

The key is the server (the provider and its base URL, with any credentials stripped:
the URL's user and password, and query parameters such as `api-key` or `key`), the
endpoint and the canonical JSON body, hashed. So the same body sent to another server,
or through another provider (which would translate it differently), is asked again.
The API key is never part of the key nor stored. Only successful responses are stored.
The cache lives in `$SURGE_CACHE_DIR` (default `~/.cache/surge`) as one SQLite file;
writes are committed once per event-loop tick, so concurrent jobs sharing it wait on
each other for microseconds, not seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from surge.jobs._model import JobInputError
from surge.jobs._urls import without_credentials
from surge.jobs.journal import body_hash


def default_cache_dir() -> Path:
    configured = os.environ.get("SURGE_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "surge"


def server_identity(provider: str, base_url: str | None) -> str:
    """Who answers: the provider and its base URL without credentials.

    >>> server_identity("openai", "https://me:pw@Example.com/v1/?api-key=s3cret&api-version=2")
    'openai https://example.com/v1?api-version=2'
    """
    if provider == "local":
        return "local"
    if not base_url:
        from surge.providers._anthropic import DEFAULT_BASE_URL as ANTHROPIC_URL
        from surge.providers._openai import DEFAULT_BASE_URL as OPENAI_URL

        base_url = ANTHROPIC_URL if provider == "anthropic" else OPENAI_URL
    return f"{provider} {without_credentials(base_url)}"


class ResponseCache:
    """Answers by (server, endpoint, body). `provider` and `base_url` are the job's."""

    def __init__(
        self, directory: str | Path | None = None, *, provider: str, base_url: str | None
    ) -> None:
        folder = Path(directory) if directory is not None else default_cache_dir()
        self.path = folder / "responses.sqlite"
        self.server = server_identity(provider, base_url)
        self._uncommitted = False
        self._commit_loop: asyncio.AbstractEventLoop | None = None
        self.hits = 0
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # `responses`, the table earlier versions wrote, was keyed without the server.
            self._db.execute("DROP TABLE IF EXISTS responses")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, server TEXT NOT NULL, "
                "model TEXT, body TEXT NOT NULL, stored_at REAL NOT NULL)"
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._unusable(exc) from exc

    def _unusable(self, exc: BaseException) -> JobInputError:
        return JobInputError(
            f"the response cache {self.path} cannot be used ({exc}). HINT: delete it (it "
            "only saves asking the same thing twice), or rerun with --no-cache."
        )

    def key(self, url: str, body: dict[str, Any]) -> str:
        digest = body_hash(url, body)
        return hashlib.sha256(f"{self.server}\n{digest}".encode()).hexdigest()

    def get(self, url: str, body: dict[str, Any]) -> dict[str, Any] | None:
        try:
            row = self._db.execute(
                "SELECT body FROM answers WHERE key = ?", (self.key(url, body),)
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._unusable(exc) from exc
        if row is None:
            return None
        self.hits += 1
        value: dict[str, Any] = json.loads(row[0])
        return value

    def put(self, url: str, body: dict[str, Any], response: dict[str, Any]) -> None:
        try:
            if not self._uncommitted:
                self._db.execute("BEGIN")
                self._uncommitted = True
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                (self.key(url, body), self.server, body.get("model"), json.dumps(response),
                 time.time()),
            )  # fmt: skip
        except sqlite3.Error as exc:
            raise self._unusable(exc) from exc
        self._schedule_commit()

    def _schedule_commit(self) -> None:
        """One commit per event-loop tick, so the shared file is locked only briefly."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.commit()
            return
        if self._commit_loop is not loop:  # not yet scheduled on this (running) loop
            self._commit_loop = loop
            loop.call_soon(self._commit_tick)

    def _commit_tick(self) -> None:
        self._commit_loop = None
        with contextlib.suppress(sqlite3.Error):  # a lost cache write costs nothing
            self.commit()

    def commit(self) -> None:
        if self._uncommitted:
            self._uncommitted = False
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.commit()
        self._db.close()
