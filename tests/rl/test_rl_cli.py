"""`surge rl demo` end to end, kept short."""

from __future__ import annotations

from typer.testing import CliRunner

import surge.cli._rl  # noqa: F401  (registers `surge rl`)
from surge.cli import app


def test_rl_demo_runs_both_ways() -> None:
    result = CliRunner().invoke(
        app, ["rl", "demo", "--steps", "4", "--length", "3", "--engine", "thread"]
    )
    assert result.exit_code == 0, result.output
    assert "sync" in result.output and "async2" in result.output
    assert "surge rl demo" in result.output


def test_rl_demo_rejects_unknown_mode() -> None:
    result = CliRunner().invoke(app, ["rl", "demo", "--mode", "fast"])
    assert result.exit_code != 0
