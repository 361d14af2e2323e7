"""A response cache shared across jobs: identical requests are not paid for twice.

The key is the endpoint plus the canonical JSON body, hashed; it never includes the
API key or the base URL's credentials. Only successful responses are stored. The cache
lives in `$SURGE_CACHE_DIR` (default `~/.cache/surge`) as one SQLite file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from surge.jobs.journal import body_hash

COMMIT_EVERY = 50


def default_cache_dir() -> Path:
    configured = os.environ.get("SURGE_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "surge"


class ResponseCache:
    def __init__(self, directory: str | Path | None = None) -> None:
        folder = Path(directory) if directory is not None else default_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "responses.sqlite"
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, "
            "body TEXT NOT NULL, stored_at REAL NOT NULL)"
        )
        self._uncommitted = 0
        self.hits = 0

    @staticmethod
    def key(url: str, body: dict[str, Any]) -> str:
        return body_hash(url, body)

    def get(self, url: str, body: dict[str, Any]) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT body FROM responses WHERE key = ?", (self.key(url, body),)
        ).fetchone()
        if row is None:
            return None
        self.hits += 1
        value: dict[str, Any] = json.loads(row[0])
        return value

    def put(self, url: str, body: dict[str, Any], response: dict[str, Any]) -> None:
        if self._uncommitted == 0:
            self._db.execute("BEGIN")
        self._db.execute(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
            (self.key(url, body), body.get("model"), json.dumps(response), time.time()),
        )
        self._uncommitted += 1
        if self._uncommitted >= COMMIT_EVERY:
            self.commit()

    def commit(self) -> None:
        if self._uncommitted:
            self._db.execute("COMMIT")
            self._uncommitted = 0

    def close(self) -> None:
        self.commit()
        self._db.close()
