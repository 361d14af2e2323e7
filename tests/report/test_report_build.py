"""surge report: the HTML and PNG from real and edge-case journals, and the command."""

from __future__ import annotations

import base64
import io
import re
import sqlite3
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.report.conftest import SECRET, make_journal
from typer.testing import CliRunner

from surge.cli import app
from surge.jobs import JobInputError
from surge.report import PLOTS, build_report, load_job
from surge.report._data import safe_url
from surge.report._plots import in_flight

IDS = [spec.id for spec in PLOTS]


def figures(html: str) -> dict[str, str]:
    """Each figure's inner HTML by id."""
    return dict(re.findall(r'<figure id="([^"]+)">(.*?)</figure>', html, flags=re.S))


def embedded_pngs(html: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(b)))
        for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    ]


def test_real_job_report_has_every_plot_and_the_header(real_report: tuple[Path, Path]) -> None:
    html_path, png_path = real_report
    html = html_path.read_text()
    found = figures(html)
    assert list(found) == IDS
    for spec in PLOTS:
        assert f'alt="{spec.alt}"' in found[spec.id], spec.id
        assert 'class="empty"' not in found[spec.id], spec.id
    images = embedded_pngs(html)
    assert len(images) == len(PLOTS) and all(im.size[0] >= 800 for im in images)
    summary = Image.open(png_path)
    assert summary.size[0] > 1000 and summary.size[1] > 1500
    # Header: the numbers come from the journal.
    # Header: the limits the job ran under, the server's RPM (3,000) below the given 6,000.
    for text in (
        "sim-small",
        "RPM 3,000/min (the server's headers; 6,000/min given)",
        "TPM none (not given, and the server's headers published none)",
        "at most 24 in flight",
        "1: complete",
        "<th>failed</th><td>2</td>",
        "<td>3,000/min (headers)</td><td>none</td><td>24</td>",
    ):
        assert text in unescape(html), text
    assert "not set" not in html
    assert re.search(r"retried attempts</th><td>[1-9][\d,]* \([1-9][\d,]* were 429", html), (
        "expected retries and 429s"
    )


def test_report_is_self_contained_and_never_holds_the_key(real_report: tuple[Path, Path]) -> None:
    html = real_report[0].read_text()
    assert SECRET not in html
    assert "default-src 'none'" in html  # nothing may be fetched, even if something tried
    assert not re.search(r'(src|href)="(?!data:)', html)


def test_output_path_and_journal_path_give_the_same_report(real_job: Path) -> None:
    a, b = load_job(real_job), load_job(f"{real_job}.journal")
    assert a.counts == b.counts and a.span == b.span


def test_report_reads_the_journal_without_writing_it(real_job: Path) -> None:
    journal = Path(f"{real_job}.journal")
    before = journal.read_bytes()
    load_job(real_job)  # all that build_report reads
    assert journal.read_bytes() == before


def test_data_series_match_the_journal(real_job: Path) -> None:
    data = load_job(real_job)
    db = sqlite3.connect(f"{real_job}.journal")
    (attempts,) = db.execute("SELECT COUNT(*) FROM attempts").fetchone()
    (limited,) = db.execute("SELECT COUNT(*) FROM attempts WHERE kind = 'rate_limited'").fetchone()
    assert data.attempt_times.size == attempts and int(data.attempt_is_429.sum()) == limited
    assert data.failed_by_reason == {"bad_request": 2}
    assert data.finished.min() >= 0 and data.finished.max() <= data.span + 1e-6
    # Answering attempts are a subset of the requests on the wire: never above the cap.
    _, wire = in_flight(data.answered - data.latency, data.answered, data.span)
    assert 0 < wire.max() <= 24


@pytest.mark.parametrize(
    ("case", "notes"),
    [
        ("empty", set(IDS)),
        ("interrupted", {"plot-retries", "plot-failures"}),
        (
            "all_cached",
            {
                "plot-token-throughput",
                "plot-in-flight",
                "plot-latency",
                "plot-retries",
                "plot-failures",
            },
        ),
        ("no_failures", {"plot-retries", "plot-failures"}),
        ("failures", set()),
        ("no_runs", {"plot-retries", "plot-failures"}),
    ],
)
def test_edge_cases_say_nothing_to_plot_instead_of_a_blank_chart(
    case: str, notes: set[str], tmp_path: Path
) -> None:
    journal = tmp_path / "out.jsonl.journal"
    if case == "empty":
        make_journal(journal, 0, runs=())
    elif case == "interrupted":
        make_journal(journal, 30, finished=12, runs=((0.0, 2.0, "interrupted"), (5.0, None, None)))
    elif case == "all_cached":
        make_journal(journal, 10, cached=True)
    elif case == "no_failures":
        make_journal(journal, 20)
    elif case == "failures":
        make_journal(journal, 20, failed=(3, 4))
    else:
        make_journal(journal, 20, runs=())
    # The summary PNG for two cases only: it is the slowest part and shares the drawing.
    png = tmp_path / "r.png" if case in ("empty", "interrupted") else None
    html = build_report(journal, tmp_path / "r.html", png_path=png).read_text()
    found = figures(html)
    assert list(found) == IDS
    empty = {fid for fid, body in found.items() if 'class="empty"' in body}
    assert empty == notes
    for fid in empty:
        assert "nothing to plot" in found[fid] and "<img" not in found[fid]
    assert len(embedded_pngs(html)) == len(IDS) - len(notes)
    if png is not None:
        assert Image.open(png).size[0] > 1000
    if case == "interrupted":
        assert "<th>pending</th><td>18</td>" in html and "2: interrupted, running or killed" in html
    if case == "all_cached":
        assert "10 from cache" in html


def test_in_flight_counts_overlaps_and_back_to_back_items_once() -> None:
    starts, ends = np.array([0.0, 0.5, 1.0, 2.0]), np.array([1.0, 1.5, 2.0, 3.0])
    edges, peaks = in_flight(starts, ends, 4.0, bins=4)
    assert edges.tolist() == [0, 1, 2, 3, 4]
    assert peaks.tolist() == [2, 2, 1, 0]
    assert in_flight(starts[:0], ends[:0], 0.0, bins=3)[1].tolist() == [0, 0, 0]


def test_base_url_loses_credentials_and_query() -> None:
    assert (
        safe_url("https://u:p@api.example.com:8443/v1?api-key=x#f")
        == "https://api.example.com:8443/v1"
    )
    assert safe_url(None) is None


def test_header_base_url_is_scrubbed(tmp_path: Path) -> None:
    journal = make_journal(
        tmp_path / "j", 3, settings={"base_url": "http://user:hunter2@127.0.0.1:9/v1?key=hunter2"}
    )
    html = build_report(journal, tmp_path / "r.html").read_text()
    assert "hunter2" not in html and "http://127.0.0.1:9/v1" in html


def test_missing_or_foreign_journal_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(JobInputError, match="no journal at"):
        build_report(tmp_path / "nothing.jsonl", tmp_path / "r.html")
    (tmp_path / "in.jsonl").write_text("{}\n")
    with pytest.raises(JobInputError, match="not a surge journal"):
        build_report(tmp_path / "in.jsonl", tmp_path / "r.html")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)")
    with pytest.raises(JobInputError, match="no items table"):
        build_report(other, tmp_path / "r.html")


def test_cli_writes_html_and_png(tmp_path: Path) -> None:
    make_journal(tmp_path / "out.jsonl.journal", 20, failed=(1,))
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "report",
            str(tmp_path / "out.jsonl"),
            "-o",
            str(tmp_path / "r.html"),
            "--png",
            str(tmp_path / "r.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").stat().st_size > 10_000 and (
        tmp_path / "r.png"
    ).stat().st_size > 10_000
    make_journal(tmp_path / "empty.jsonl.journal", 0, runs=())
    result = runner.invoke(app, ["report", str(tmp_path / "empty.jsonl.journal")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "empty.jsonl.report.html").exists()
    result = runner.invoke(app, ["report", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "no journal" in result.output
