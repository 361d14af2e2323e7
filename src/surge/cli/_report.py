"""`surge report`: look at a job instead of reading its log."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from surge.cli import app
from surge.jobs import JobInputError


@app.command()
def report(
    job: Path = typer.Argument(..., help="The job's OUTPUT file, or its .journal."),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="HTML file to write (default: JOB.report.html)."
    ),
    png: Path | None = typer.Option(
        None, "--png", help="Also write one summary image (PNG) with every plot."
    ),
) -> None:
    """Write a self-contained HTML report of a job: throughput, latency, 429s, cost.

    Example: surge report out.jsonl -o report.html --png report.png
    """
    from surge.report import build_report  # matplotlib loads only for this command

    err = Console(stderr=True)
    name = str(job)
    html = output or Path(
        (name[: -len(".journal")] if name.endswith(".journal") else name) + ".report.html"
    )
    try:
        build_report(job, html, png_path=png)
    except JobInputError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    err.print(f"report: {html}" + (f"\nsummary image: {png}" if png else ""), highlight=False)
