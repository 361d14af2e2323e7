"""The report page: one self-contained HTML file, plots embedded as data: URIs.

A Content-Security-Policy forbids every fetch, so what renders offline is exactly what
renders anywhere. Each plot sits in its own ``<figure id=...>``; a few lines of script
mark each ``<img>`` with ``data-loaded="yes"`` once it decoded, which the browser test
reads back. Every value from the journal is HTML-escaped.
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from html import escape

from surge.report._data import JobData, Run, safe_url
from surge.report._plots import PLOTS, render, usd

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1060px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { text-align: left; padding: .25em .9em .25em 0; border-bottom: 1px solid #eee;
         vertical-align: top; }
th { color: #555; font-weight: 600; }
figure { margin: 2em 0; }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: #555; font-size: .92em; margin-top: .3em; }
.empty { border: 1px dashed #bbb; padding: 1.5em; color: #555; background: #fafafa; }
footer { color: #888; font-size: .85em; margin-top: 3em; }
"""

# Marks each plot that decoded, with where it lies on the page, for the headless-browser
# test: it crops the screenshot to each box and checks that something was drawn there.
_SCRIPT = """
window.addEventListener("load", function () {
  var loaded = 0;
  document.querySelectorAll("figure img").forEach(function (img) {
    var ok = img.complete && img.naturalWidth > 0;
    var box = img.getBoundingClientRect();
    img.setAttribute("data-loaded", ok ? "yes" : "no");
    img.setAttribute("data-box", [box.left + window.scrollX, box.top + window.scrollY,
                                  box.width, box.height].map(Math.round).join(","));
    if (ok) { loaded += 1; }
  });
  document.body.setAttribute("data-plots-loaded", String(loaded));
  document.body.setAttribute("data-page-height",
                             String(document.documentElement.scrollHeight));
});
"""


def _when(data: JobData, offset: float) -> str:
    moment = datetime.fromtimestamp(data.origin + offset, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _limits_text(data: JobData) -> str:
    """The latest run's limits in words; ITPM/OTPM only where there were any."""
    parts = []
    for name in ("RPM", "TPM", "ITPM", "OTPM"):
        limit = data.limit(name)
        if name in ("RPM", "TPM") or limit.per_minute is not None or limit.given is not None:
            parts.append(f"{name} {limit.describe()}")
    concurrency = data.concurrency
    parts.append(f"at most {concurrency:,} in flight" if concurrency else "no concurrency cap")
    return "; ".join(parts)


def _limit_cell(run: Run, name: str) -> str:
    limit = run.limit(name)
    if limit.per_minute is None:
        return "none" if limit.recorded else "not set"
    learned = limit.given is None or limit.per_minute < limit.given
    return f"{limit.per_minute:,g}/min" + (" (headers)" if learned else "")


def header_rows(data: JobData) -> list[tuple[str, str]]:
    """The report's header as (label, text) pairs; plain text, not yet escaped.

    Example:
        >>> dict(header_rows(data))["model"]  # doctest: +SKIP
        'gpt-4o-mini'
    """
    settings = data.settings
    journal = str(data.journal)
    job = journal[: -len(".journal")] if journal.endswith(".journal") else journal
    counts = data.counts
    done = f"{counts.get('done', 0):,}"
    if data.cached:
        done += f" ({data.cached:,} from cache)"
    outcomes = ", ".join(run.outcome or "running or killed" for run in data.runs) or "none"
    ran = sum(run.ended - run.started for run in data.runs if run.ended is not None)
    tokens_in = int(data.input_tokens.sum())
    tokens_out = int(data.output_tokens.sum())
    minutes = data.span / 60
    per_minute = ""
    if minutes > 0 and data.token_times.size:
        per_minute = (
            f" ({(tokens_in + tokens_out) / minutes:,.0f} tokens/min, "
            f"{usd(float(data.cost.sum()) / minutes)}/min over the job)"
        )
    retried = int(data.attempt_times.size)
    limited = int(data.attempt_is_429.sum())
    rows = [
        ("job", job),
        ("journal", journal),
        ("input", str(settings.get("input") or "unknown")),
        ("model", str(settings.get("model") or "as each line names it")),
        ("provider", str(settings.get("provider") or "unknown")),
        ("base URL", safe_url(settings.get("base_url")) or "provider default"),
        ("limits (latest run)", _limits_text(data)),
        ("runs", f"{len(data.runs)}: {outcomes}"),
        ("items", f"{data.total:,}"),
        ("done", done),
        ("failed", f"{counts.get('failed', 0):,}"),
        ("pending", f"{counts.get('pending', 0):,}"),
        ("invalid input lines", f"{counts.get('invalid', 0):,}"),
        ("retried attempts", f"{retried:,} ({limited:,} were 429 rate limited)"),
        ("wall time", f"{_duration(ran)} running; {_duration(data.span)} first to last event"),
        ("tokens in / out", f"{tokens_in:,} / {tokens_out:,}"),
        ("cost", usd(float(data.cost.sum())) + per_minute),
    ]
    if data.left_out:
        rows.insert(
            rows.index(("items", f"{data.total:,}")) + 1,
            ("left out", f"{data.left_out:,} earlier answers for lines no longer in the input"),
        )
    return rows


def _runs_table(data: JobData) -> str:
    if not data.runs:
        return ""
    rows = []
    for number, run in enumerate(data.runs, start=1):
        length = "" if run.ended is None else _duration(run.ended - run.started)
        concurrency = run.limits.get("concurrency", run.settings.get("concurrency", ""))
        cells = (
            number, _when(data, run.started), length, run.outcome or "running or killed",
            _limit_cell(run, "RPM"), _limit_cell(run, "TPM"), concurrency,
        )  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "".join(
        f"<th>{h}</th>"
        for h in ("run", "started", "lasted", "outcome", "RPM", "TPM", "concurrency")
    )
    return f'<table id="runs"><tr>{head}</tr>{"".join(rows)}</table>'


def page(data: JobData) -> str:
    """The whole report as one HTML string."""
    header = "".join(
        f"<tr><th>{escape(label)}</th><td>{escape(text)}</td></tr>"
        for label, text in header_rows(data)
    )
    figures = []
    for spec in PLOTS:
        rendered = render(spec, data)
        if isinstance(rendered, bytes):
            uri = "data:image/png;base64," + base64.b64encode(rendered).decode("ascii")
            body = f'<img src="{uri}" alt="{escape(spec.alt)}">'
        else:
            body = f'<p class="empty"><strong>{escape(spec.title)}:</strong> {escape(rendered)}</p>'
        figures.append(
            f'<figure id="{spec.id}">{body}<figcaption>{escape(spec.caption)}</figcaption></figure>'
        )
    title = f"surge report: {data.journal.name}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{escape(title)}</h1>
<table id="summary">{header}</table>
{_runs_table(data)}
{"".join(figures)}
<footer>Generated by surge report on {escape(_now())} from the job's journal.
Times are wall-clock, relative to the first run's start ({escape(_when(data, 0))}).</footer>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def _now() -> str:
    return datetime.now(tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
