"""The 7-call comparison behind `surge demo`, on virtual time: exact ideals, no slack."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from surge.cli import app
from surge.cli._demo import ideal_makespan, seven_call_comparison
from surge.testing import run


def test_ideal_makespan_schedules_in_order_on_free_slots() -> None:
    assert ideal_makespan([1.0, 2.0, 3.0], None) == (3.0, 1.0)
    assert ideal_makespan([1.0, 1.0, 1.0], 1) == (3.0, 1.0)
    # slots: [1, 3] -> third call starts at 1 on slot 1 -> ends at 2; fourth starts at 2 -> 2.5
    assert ideal_makespan([1.0, 3.0, 1.0, 0.5], 2) == (3.0, 1.0)


def test_every_mode_meets_its_ideal_on_virtual_time() -> None:
    latencies = [0.9, 0.7, 1.1, 0.8, 0.85, 0.95, 0.75]
    timings = {t.mode: t for t in run(seven_call_comparison(latencies))}
    assert timings["sequential"].wall == pytest.approx(sum(latencies))
    assert timings["gather"].wall == pytest.approx(1.1)
    assert timings["as_completed"].first_result == pytest.approx(0.7)
    assert timings["gather, capped at 2"].wall == pytest.approx(ideal_makespan(latencies, 2)[0])
    assert all(t.within_target for t in timings.values())


def test_demo_command_runs_all_three_parts(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--fast", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "as_completed, capped at 2" in result.output
    assert "faster than sequential" in result.output
    assert "100 calls at concurrency 50" in result.output
    assert "done 60/60" in result.output
    assert len((tmp_path / "demo-output.jsonl").read_text().splitlines()) == 60
