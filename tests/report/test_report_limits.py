"""surge report shows the limits a job ran under, learned ones included, in plain words."""

from __future__ import annotations

import asyncio
import sqlite3
from html import unescape
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from tests.report.conftest import make_journal, write_batch

import surge.sim
from surge.jobs import JobSettings, run_job
from surge.report import PLOTS, build_report, load_job
from surge.report._data import Limit

IN_FLIGHT = next(spec for spec in PLOTS if spec.id == "plot-in-flight")


def test_limits_learned_from_the_headers_are_recorded_and_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SURGE_CACHE_DIR", str(tmp_path / "cache"))
    source = write_batch(tmp_path / "in.jsonl", 12)
    output = tmp_path / "out.jsonl"
    with surge.sim.serve_in_thread(profile="fast", rpm=1200, tpm=90_000) as server:
        settings = JobSettings(
            input=str(source),
            output=str(output),
            base_url=server.url,
            concurrency=4,
            timeout=5.0,
        )  # fmt: skip  (no --rpm, no --tpm: surge learns them from the headers)
        report = asyncio.run(run_job(settings))
    assert report.summary.done == 12
    with sqlite3.connect(f"{output}.journal") as db:
        keys = [k for (k,) in db.execute("SELECT key FROM meta WHERE key LIKE 'run_limits:%'")]
    assert keys == ["run_limits:1"]

    data = load_job(output)
    assert data.limit("RPM") == Limit("RPM", 1200.0, None, True)
    assert data.limit("TPM").per_minute == 90_000 and data.concurrency == 4
    assert data.limit("ITPM").per_minute is None

    html = unescape(build_report(output, tmp_path / "r.html").read_text())
    assert "RPM 1,200/min (from the server's headers); TPM 90,000/min (from the server's " in html
    assert "at most 4 in flight" in html and "ITPM" not in html.split("</table>")[0]
    assert "RPM not set" not in html and "RPM none" not in html


def test_limits_in_words() -> None:
    assert Limit("RPM", 500.0, 500.0, True).describe() == "500/min (given)"
    assert Limit("TPM", None, None, True).describe() == (
        "none (not given, and the server's headers published none)"
    )
    assert Limit("TPM", None, None, False).describe() == "not set"  # an older journal
    assert Limit("RPM", 3000.0, 6000.0, True).describe() == (
        "3,000/min (the server's headers; 6,000/min given)"
    )


def test_an_older_journal_without_recorded_limits_shows_what_was_given(tmp_path: Path) -> None:
    journal = make_journal(tmp_path / "j", 5, settings={"rpm": 600, "concurrency": 8})
    data = load_job(journal)
    assert data.limit("RPM") == Limit("RPM", 600.0, 600.0, False) and data.concurrency == 8


def draw_in_flight(journal: Path) -> tuple[float, list[str]]:
    ax = Figure().add_subplot()
    assert IN_FLIGHT.draw(ax, load_job(journal)) is None
    legend = ax.get_legend()
    return ax.get_ylim()[1], [t.get_text() for t in legend.get_texts()]


def test_in_flight_is_scaled_to_what_was_in_flight(tmp_path: Path) -> None:
    # Items start every 0.1 s and take 0.3 s: three or four in flight at most.
    far = make_journal(tmp_path / "far", 30, settings={"concurrency": 500})
    top, labels = draw_in_flight(far)
    assert 3 <= top <= 5, top  # not 500
    assert "concurrency limit 500 (far above, not drawn)" in labels

    near = make_journal(tmp_path / "near", 30, settings={"concurrency": 6})
    top, labels = draw_in_flight(near)
    assert top == pytest.approx(6 * 1.15) and "concurrency limit 6" in labels


def test_captions_speak_plainly() -> None:
    """Captions say what a plot shows and how to read it, not which column it reads."""
    for spec in PLOTS:
        for jargon in ("finished_at", "started_at", "error_code", "attempts table", "items."):
            assert jargon not in spec.caption, (spec.id, jargon)
        assert len(spec.caption.split()) >= 20, spec.id
