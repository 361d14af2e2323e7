"""Fixtures for batch jobs: inputs written to tmp_path, a simulator in a thread, an
isolated response cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import surge.sim


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("SURGE_CACHE_DIR", str(folder))
    return folder


def chat_body(i: int, text: str | None = None) -> dict[str, Any]:
    return {
        "model": "sim-small",
        "messages": [{"role": "user", "content": text or f"Question {i}: name a colour."}],
        "max_tokens": 24,
    }


def write_batch(path: Path, n: int, *, poison: set[int] = frozenset(), start: int = 0) -> Path:  # type: ignore[assignment]
    with path.open("w") as handle:
        for i in range(start, start + n):
            text = f"Question {i}: name a colour." + (f" {surge.sim.POISON}" if i in poison else "")
            line = {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": chat_body(i, text),
            }
            handle.write(json.dumps(line) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def sim() -> Iterator[surge.sim.SimServer]:
    """A fast simulator on its own thread, so a job under test can run in a subprocess."""
    with surge.sim.serve_in_thread(profile="fast", seed=3) as server:
        yield server
