"""The progress line: on an 80-column terminal the numbers that matter stay whole."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from surge.jobs.progress import ProgressDisplay, Snapshot


def snapshot(**changes: object) -> Snapshot:
    values: dict[str, object] = {
        "done": 12_345, "total": 100_000, "failed": 17, "in_flight": 50, "retries": 40,
        "rate_limited": 321, "tokens": 2_000_000, "cost": 12.3456, "elapsed": 100.0,
    }  # fmt: skip
    values.update(changes)
    return Snapshot(**values)  # type: ignore[arg-type]


def final_frame(snap: Snapshot, width: int = 80) -> str:
    """What the terminal shows last: the live display clears and redraws its line."""
    screen = io.StringIO()
    console = Console(file=screen, width=width, record=True, force_terminal=True, color_system=None)
    with ProgressDisplay(console=console) as display:
        display.update(snap)
    frames = screen.getvalue().split("\x1b[2K")  # erase line: the next frame begins
    return frames[-1].replace("\x1b[?25h", "").rstrip("\n")


@pytest.mark.parametrize(
    ("snap", "must_show"),
    [
        (snapshot(), ["12,362/100,000", "ETA 11m50s", "$12.35", "123 req/s", "429s 321 failed 17"]),
        (snapshot(done=5, total=8, failed=0, rate_limited=0, cost=0.0012, elapsed=2.0),
         ["5/8", "ETA 1s", "$0.0012", "2.5 req/s", "429s 0"]),
        # A million-line job with trouble: the bar and req/s give way, not the numbers.
        (snapshot(done=987_654, total=1_000_000, failed=12_345, rate_limited=123_456,
                  cost=1234.5, elapsed=36_000.0),
         ["999,999/1,000,000", "ETA 0s", "$1,234.50", "429s 123,456 failed 12,345"]),
        (snapshot(done=0, failed=0, cost=None), ["0/100,000", "ETA ?", "$?"]),
    ],
)  # fmt: skip
def test_progress_fits_80_columns_with_count_eta_and_cost(
    snap: Snapshot, must_show: list[str]
) -> None:
    frame = final_frame(snap)
    assert "\n" not in frame and len(frame) <= 80, repr(frame)
    for part in must_show:
        assert part in frame, (part, frame)
    assert frame.index(must_show[0]) >= 10, "the bar keeps some room"


def test_rate_and_trouble_are_dropped_before_the_count_on_a_narrow_terminal() -> None:
    frame = final_frame(snapshot(), width=50)
    assert len(frame) <= 50 and "12,362/100,000 ETA 11m50s" in frame and "$12.35" in frame
    assert "req/s" not in frame


def test_without_a_terminal_it_logs_a_line_every_interval() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(stream=stream, interval=3600)
    with display:
        display.update(snapshot())
        display.update(snapshot(done=20_000))  # within the interval: not logged
        display.update(snapshot(done=30_000), force=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[surge] 12,362/100,000 finished")
    assert "ETA 710s" in lines[0] and "$12.35" in lines[0] and "30,017/100,000" in lines[1]
