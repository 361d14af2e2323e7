"""Look at a batch job instead of reading its log: an HTML report from its journal.

The report is one self-contained HTML file (plots embedded, nothing fetched) with
throughput against the RPM/TPM limits, requests in flight, latency percentiles,
retries and 429s over time, failures by reason, tokens and cost; ``png_path`` adds one
summary image. It reads the journal read-only, and the journal never holds an API key.

Example:
    >>> from surge.report import build_report
    >>> build_report("out.jsonl", "report.html", png_path="report.png")  # doctest: +SKIP
    PosixPath('report.html')

The command line: ``surge report out.jsonl -o report.html --png report.png``.
"""

from __future__ import annotations

from pathlib import Path

# Figures are built with matplotlib.figure.Figure, never pyplot: no display, no
# global backend switched under an application (or notebook) that imports surge.
from surge.report._data import JobData, load, resolve_journal
from surge.report._html import header_rows, page
from surge.report._plots import PLOTS, summary_png

__all__ = ["PLOTS", "JobData", "build_report", "load_job"]


def load_job(job: str | Path) -> JobData:
    """A job's journal as arrays: ``job`` is its OUTPUT path or the journal itself."""
    return load(resolve_journal(job))


def build_report(
    journal_path: str | Path, html_path: str | Path, *, png_path: str | Path | None = None
) -> Path:
    """Write the HTML report (and the summary PNG if asked); returns the HTML path.

    ``journal_path`` may be the job's OUTPUT or its ``.journal``. Raises
    ``surge.jobs.JobInputError`` when there is no readable journal there.

    Example:
        >>> build_report("out.jsonl.journal", "report.html")  # doctest: +SKIP
        PosixPath('report.html')
    """
    data = load_job(journal_path)
    html = Path(html_path)
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(page(data), encoding="utf-8")
    if png_path is not None:
        png = Path(png_path)
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(summary_png(data, header_rows(data)))
    return html
