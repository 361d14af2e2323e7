"""Simulator tests fail if the server logged an error (an exception in the app, an
incomplete response it did not mean to send)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    errors = [
        r.getMessage()
        for when in ("setup", "call", "teardown")
        for r in caplog.get_records(when)
        if r.name.startswith("uvicorn") and r.levelname in ("WARNING", "ERROR", "CRITICAL")
    ]
    assert not errors, errors
