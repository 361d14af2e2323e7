"""The report's plots, drawn with matplotlib (Agg, no display) from a ``JobData``.

Each plot is a ``PlotSpec`` whose ``draw`` fills one Axes and returns ``None``, or
returns the reason there is nothing to plot (no retries, all cached...), so the HTML
can say so instead of showing an empty frame. The same functions fill the summary
grid behind ``--png``.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from surge.report._data import FloatArray, JobData, Limit

# Colours from matplotlib's default cycle, named for what they mean here.
_BLUE, _ORANGE, _GREEN, _RED, _PURPLE, _GREY = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#7f7f7f",
)  # fmt: skip
_NICE_WIDTHS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)


@dataclass(frozen=True)
class PlotSpec:
    """One plot: its HTML id, title, alt text, caption, and how to draw it."""

    id: str
    title: str
    alt: str
    caption: str
    draw: Callable[[Axes, JobData], str | None]


# -- helpers ---------------------------------------------------------------------------


def usd(value: float) -> str:
    """Dollars with enough digits for cheap jobs.

    Example:
        >>> usd(0.0035), usd(12.5)
        ('$0.0035', '$12.50')
    """
    return f"${value:,.4f}" if abs(value) < 1 else f"${value:,.2f}"


def _time_unit(span: float) -> tuple[float, str]:
    if span <= 300:
        return 1.0, "s"
    if span <= 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def bin_width(span: float, bins: int) -> float:
    """A round bin width (seconds) giving about ``bins`` bins over ``span``.

    Example:
        >>> bin_width(600, 60)
        10
    """
    for width in _NICE_WIDTHS:
        if span / width <= bins:
            return width
    return float(np.ceil(span / bins / 3600) * 3600)


def _edges(data: JobData, width: float) -> FloatArray:
    count = max(1, int(np.ceil(max(data.span, 1e-9) / width)))
    return np.arange(count + 1, dtype=np.float64) * width


def _time_axis(ax: Axes, data: JobData) -> float:
    """Label the x axis in s/min/h; returns the divisor for x values."""
    scale, unit = _time_unit(data.span)
    ax.set_xlabel(f"time since the job started ({unit})")
    ax.set_xlim(0, max(data.span, 1e-9) / scale)
    if len(data.runs) > 1:  # resumed jobs: show where each run began
        for number, run in enumerate(data.runs[1:], start=2):
            ax.axvline(run.started / scale, color=_GREY, linestyle=":", linewidth=1)
            ax.annotate(
                f"run {number}",
                (run.started / scale, 1),
                xycoords=("data", "axes fraction"),
                fontsize=8,
                color=_GREY,
                va="top",
                ha="left",
            )
    return scale


def _limit_line(ax: Axes, limit: Limit, unit: str, colour: str = _RED) -> None:
    """The limit the run ran under as a dashed line (given, or from the server's
    headers), or a legend entry saying there was none."""
    if limit.per_minute is not None and limit.per_minute > 0:
        rate = limit.per_minute / 60
        source = "given" if limit.given == limit.per_minute else "from the server's headers"
        ax.axhline(
            rate,
            color=colour,
            linestyle="--",
            linewidth=1.2,
            label=f"{limit.name} limit {limit.per_minute:,.0f}/min = {rate:,.1f} {unit}/s ({source})",
        )
        ax.set_ylim(top=max(ax.get_ylim()[1], rate * 1.15))
    elif limit.given is None and limit.name in ("RPM", "TPM"):
        ax.plot([], [], " ", label=f"{limit.name}: {limit.describe()}")


def _steps(ax: Axes, edges: FloatArray, values: FloatArray, scale: float, **kw: Any) -> None:
    ax.stairs(values, edges / scale, **kw)


# -- the plots -------------------------------------------------------------------------


def _throughput(ax: Axes, data: JobData) -> str | None:
    if data.finished.size == 0 and data.attempt_times.size == 0:
        return "nothing to plot: no request has finished yet"
    width = bin_width(data.span, 60)
    edges = _edges(data, width)
    done = np.histogram(data.finished, edges)[0] / width
    sent = (np.histogram(data.ends, edges)[0] + np.histogram(data.attempt_times, edges)[0]) / width
    scale = _time_axis(ax, data)
    _steps(ax, edges, sent, scale, color=_ORANGE, label="requests answered (incl. retried)")
    _steps(ax, edges, done, scale, color=_BLUE, fill=True, alpha=0.35, label="items completed")
    _limit_line(ax, data.limit("RPM"), "req")
    ax.set_ylabel(f"per second ({width:g} s bins)")
    ax.legend(loc="upper right", fontsize=8)
    return None


def _token_throughput(ax: Axes, data: JobData) -> str | None:
    live = ~data.token_cached
    if not live.any():
        return "nothing to plot: no tokens reported by the API (none finished, or all cached)"
    width = bin_width(data.span, 60)
    edges = _edges(data, width)
    times = data.token_times[live]
    inp = np.histogram(times, edges, weights=data.input_tokens[live])[0] / width
    out = np.histogram(times, edges, weights=data.output_tokens[live])[0] / width
    scale = _time_axis(ax, data)
    _steps(
        ax, edges, inp + out, scale, color=_PURPLE, fill=True, alpha=0.35, label="tokens (in+out)"
    )
    _steps(ax, edges, out, scale, color=_GREEN, label="output tokens")
    _limit_line(ax, data.limit("TPM"), "tokens")
    itpm = data.limit("ITPM")
    if itpm.per_minute is not None:  # Anthropic counts input and output tokens apart
        _steps(ax, edges, inp, scale, color=_PURPLE, label="input tokens")
        _limit_line(ax, itpm, "tokens", _PURPLE)
    _limit_line(ax, data.limit("OTPM"), "tokens", _GREEN)
    ax.set_ylabel(f"tokens per second ({width:g} s bins)")
    ax.legend(loc="upper right", fontsize=8)
    return None


def in_flight(
    starts: FloatArray, ends: FloatArray, span: float, bins: int = 800
) -> tuple[FloatArray, FloatArray]:
    """Peak number of open intervals in each of ``bins`` equal bins: (edges, peaks).

    Ends sort before starts at the same instant, so back-to-back intervals count once.

    Example:
        >>> edges, peaks = in_flight(np.array([0.0, 0.5]), np.array([1.0, 2.0]), 2.0, bins=2)
        >>> peaks.tolist()
        [2.0, 1.0]
    """
    edges = np.linspace(0.0, max(span, 1e-9), bins + 1)
    peaks = np.zeros(bins, dtype=np.float64)
    if starts.size == 0:
        return edges, peaks
    times = np.concatenate([starts, ends])
    deltas = np.concatenate([np.ones(starts.size), -np.ones(ends.size)])
    order = np.lexsort((deltas, times))
    times, levels = times[order], np.cumsum(deltas[order])
    first = np.searchsorted(times, edges[:-1], side="right")
    last = np.searchsorted(times, edges[1:], side="right")
    last[-1] = times.size  # the final edge is the last event: keep it in the last bin
    # The level on entering a bin is the level after every event up to its left edge.
    entering = first > 0
    peaks[entering] = levels[first[entering] - 1]
    busy = last > first
    # Bins between two busy ones hold no events, so each reduceat segment (from one
    # busy bin's first event to the next one's) is exactly that bin's events.
    inside = np.maximum.reduceat(levels, first[busy])
    peaks[busy] = np.maximum(peaks[busy], inside)
    return edges, peaks


def _in_flight(ax: Axes, data: JobData) -> str | None:
    if data.starts.size == 0 and data.answered.size == 0:
        return (
            "nothing to plot: no item recorded its start and finish (none finished, or all cached)"
        )
    scale = _time_axis(ax, data)
    edges, items = in_flight(data.starts, data.ends, data.span)
    _steps(ax, edges, items, scale, color=_BLUE, fill=True, alpha=0.35,
           label="items in progress (incl. retry back-off)")  # fmt: skip
    edges, wire = in_flight(data.answered - data.latency, data.answered, data.span)
    _steps(ax, edges, wire, scale, color=_BLUE, label="answering requests on the wire")
    # Scaled to what was in flight: a cap more than twice the peak would flatten the
    # plot to a line along the bottom, so it is named in the legend instead.
    peak = max(float(np.concatenate([items, wire]).max()), 1.0)
    top = peak * 1.25
    concurrency = data.concurrency
    if concurrency is not None and concurrency <= 2 * peak:
        ax.axhline(
            concurrency,
            color=_RED,
            linestyle="--",
            linewidth=1.2,
            label=f"concurrency limit {concurrency:,}",
        )
        top = max(top, concurrency * 1.15)
    elif concurrency is not None:
        ax.plot([], [], " ", label=f"concurrency limit {concurrency:,} (far above, not drawn)")
    else:
        ax.plot([], [], " ", label="no concurrency limit")
    ax.set_ylim(0, top)
    ax.set_ylabel("in flight")
    ax.legend(loc="upper right", fontsize=8)
    return None


def _latency(ax: Axes, data: JobData) -> str | None:
    if data.latency.size == 0:
        return "nothing to plot: no request latency recorded (none finished, or all cached)"
    top = float(data.latency.max())
    p99 = float(np.percentile(data.latency, 99))
    if top > 3 * p99 and p99 > 0:  # a few stragglers would squash the rest into one bar
        top = 1.5 * p99
        beyond = int((data.latency > top).sum())
        ax.plot([], [], " ", label=f"{beyond:,} slower (max {data.latency.max():.2f} s) not shown")
    ax.hist(data.latency, bins=60, range=(0.0, max(top, 1e-6)), color=_BLUE, alpha=0.7)
    for q, colour in ((50, _GREEN), (90, _ORANGE), (99, _RED)):
        value = float(np.percentile(data.latency, q))
        ax.axvline(value, color=colour, linestyle="--", linewidth=1.5, label=f"p{q} {value:.2f} s")
    ax.set_xlabel("latency of the answering attempt (s)")
    ax.set_ylabel("items")
    ax.legend(loc="upper right", fontsize=8)
    return None


def _retries(ax: Axes, data: JobData) -> str | None:
    if data.attempt_times.size == 0:
        return "nothing to plot: no attempt was retried (no 429s, no errors)"
    width = bin_width(data.span, 60)
    edges = _edges(data, width)
    limited = np.histogram(data.attempt_times[data.attempt_is_429], edges)[0].astype(np.float64)
    other = np.histogram(data.attempt_times[~data.attempt_is_429], edges)[0].astype(np.float64)
    scale = _time_axis(ax, data)
    left, widths = edges[:-1] / scale, np.diff(edges) / scale
    ax.bar(
        left,
        limited,
        widths,
        align="edge",
        color=_RED,
        label=f"429 rate limited ({int(limited.sum()):,})",
    )
    ax.bar(
        left, other, widths, bottom=limited, align="edge", color=_ORANGE,
        label=f"other retried errors ({int(other.sum()):,})",
    )  # fmt: skip
    ax.set_ylabel(f"retries per {width:g} s")
    ax.legend(loc="upper right", fontsize=8)
    return None


def _failures(ax: Axes, data: JobData) -> str | None:
    reasons = sorted(set(data.failed_by_reason) | set(data.retried_by_reason))
    if not reasons:
        return "nothing to plot: no failures and no retries"
    y = np.arange(len(reasons), dtype=np.float64)
    final = [data.failed_by_reason.get(r, 0) for r in reasons]
    retried = [data.retried_by_reason.get(r, 0) for r in reasons]
    for offset, values, colour, label in (
        (-0.2, final, _RED, "items failed (final)"),
        (0.2, retried, _ORANGE, "attempts retried"),
    ):
        bars = ax.barh(y + offset, values, 0.4, color=colour, label=label)
        ax.bar_label(bars, [f"{v:,}" if v else "" for v in values], fontsize=8, padding=2)
    ax.set_yticks(y, reasons)
    ax.invert_yaxis()
    ax.set_xlabel("count")
    ax.set_xlim(0, max(*final, *retried, 1) * 1.15)
    ax.legend(loc="lower right", fontsize=8)
    return None


def _cost(ax: Axes, data: JobData) -> str | None:
    if data.token_times.size == 0:
        return "nothing to plot: no tokens recorded"
    width = bin_width(data.span, 40)
    edges = _edges(data, width)
    per_minute = 60 / width
    inp = np.histogram(data.token_times, edges, weights=data.input_tokens)[0] * per_minute
    out = np.histogram(data.token_times, edges, weights=data.output_tokens)[0] * per_minute
    scale = _time_axis(ax, data)
    left, widths = edges[:-1] / scale, np.diff(edges) / scale
    ax.bar(left, inp, widths, align="edge", color=_PURPLE, alpha=0.7, label="input tokens/min")
    ax.bar(
        left,
        out,
        widths,
        bottom=inp,
        align="edge",
        color=_GREEN,
        alpha=0.7,
        label="output tokens/min",
    )
    ax.set_ylabel(f"tokens per minute ({width:g} s bins)")
    cost_ax = ax.twinx()
    order = np.argsort(data.token_times, kind="stable")
    cumulative = np.cumsum(data.cost[order])
    cost_ax.plot(data.token_times[order] / scale, cumulative, color=_RED, label="cost so far (USD)")
    cost_ax.set_ylabel("cost so far (USD)")
    cost_ax.set_ylim(bottom=0, top=max(float(cumulative[-1]), 1e-9) * 1.15)
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = cost_ax.get_legend_handles_labels()
    ax.legend(handles + more, labels + more_labels, loc="upper left", fontsize=8)
    total = float(data.input_tokens.sum() + data.output_tokens.sum())
    title = f"total {total:,.0f} tokens, {usd(float(data.cost.sum()))}"
    ax.set_title(title, fontsize=9, loc="right", parse_math=False)
    return None


PLOTS: tuple[PlotSpec, ...] = (
    PlotSpec(
        "plot-throughput", "Throughput: requests per second",
        "Line chart of completed items and answered requests per second over time, "
        "with the RPM limit the job ran under",
        "How many requests finished each second. Blue: items completed. Orange: every "
        "answer the server sent, retried attempts included, so a gap between the two is "
        "work spent on retries. The dashed line is the requests-per-minute limit the job "
        "ran under (given with --rpm, or read from the server's headers), as a rate per "
        "second: a plateau at the line means the rate limit set the pace, not surge.",
        _throughput,
    ),
    PlotSpec(
        "plot-token-throughput", "Throughput: tokens per second",
        "Line chart of API tokens per second over time, with the token limits the job ran under",
        "Tokens the API reported using, per second (answers from surge's cache cost no "
        "tokens and are left out). The dashed lines are the token-per-minute limits the "
        "job ran under, given or read from the server's headers: touching one means that "
        "limit set the pace.",
        _token_throughput,
    ),
    PlotSpec(
        "plot-in-flight", "Requests in flight",
        "Area chart of items and requests in flight over time, with the concurrency limit",
        "How many requests were waiting for an answer at each moment; the scale follows "
        "the busiest moment. Shaded: items started and not yet finished, including those "
        "waiting to retry. Line: the request that finally answered each item. Flat at "
        "the concurrency limit (dashed) means --concurrency set the pace; well below it, "
        "a rate limit or the provider's speed did.",
        _in_flight,
    ),
    PlotSpec(
        "plot-latency", "Latency",
        "Histogram of request latency with p50, p90 and p99 marked",
        "How long the request that answered each item took (cache answers left out): "
        "each bar counts the items that took that long. Dashed lines: half the items "
        "were faster than p50, 90 % faster than p90, 99 % faster than p99.",
        _latency,
    ),
    PlotSpec(
        "plot-retries", "Retries and 429s over time",
        "Stacked bar chart of retried attempts over time, 429s separate",
        "Attempts that failed and were sent again, over time. Red: 429, the server "
        "asking surge to slow down. Orange: other errors (5xx, timeouts, broken "
        "connections, unreadable answers). A few are normal; a wall of red means the "
        "limits given were higher than the server allows.",
        _retries,
    ),
    PlotSpec(
        "plot-failures", "Failures by reason",
        "Horizontal bar chart of failures and retries by reason",
        "Why items failed for good (red: these are in OUTPUT.errors.jsonl, and "
        "--retry-failed sends them again), beside how many attempts were retried for "
        "each reason (orange).",
        _failures,
    ),
    PlotSpec(
        "plot-cost", "Tokens and cost",
        "Bar chart of tokens per minute with a line of cumulative cost",
        "Bars: input and output tokens per minute (cache answers included). Red line, "
        "right axis: what the job had cost so far, in USD (surge's price table, or "
        "--prices).",
        _cost,
    ),
)  # fmt: skip


# -- rendering -------------------------------------------------------------------------


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def render(spec: PlotSpec, data: JobData) -> bytes | str:
    """The plot as PNG bytes, or the note saying why there is nothing to plot."""
    figure = Figure(figsize=(10, 3.8), dpi=100)
    ax = figure.add_subplot()
    note = spec.draw(ax, data)
    if note is not None:
        return note
    # Fixed margins rather than a layout engine: each engine pass draws the figure
    # again, which doubled the report's build time. Only category labels vary.
    labels = [t.get_text() for t in ax.get_yticklabels()] if spec.id == "plot-failures" else []
    left = max(0.075, min(0.4, 0.035 + 0.0095 * max(map(len, labels), default=0)))
    figure.subplots_adjust(left=left, right=0.92, top=0.9, bottom=0.13)
    ax.set_title(spec.title, loc="left", fontweight="bold")
    ax.grid(alpha=0.3)
    return _png(figure)


def summary_png(data: JobData, header: list[tuple[str, str]]) -> bytes:
    """One image: the header as text, then every plot in a grid (notes where empty)."""
    columns = 2
    rows = (len(PLOTS) + columns - 1) // columns
    height = 2.2 + 4.2 * rows
    figure = Figure(figsize=(16, height), dpi=90)
    # Fixed spacing (no layout engine, which would draw this big figure twice more).
    grid = figure.add_gridspec(
        1 + rows, columns, height_ratios=[2.2] + [4.2] * rows,
        left=0.065, right=0.955, top=1 - 0.3 / height, bottom=0.5 / height, wspace=0.3, hspace=0.42,
    )  # fmt: skip
    text = figure.add_subplot(grid[0, :])
    text.axis("off")
    # Each half of the figure holds about 80 monospace characters: wrap longer entries
    # (the limits) rather than let them run into the other column.
    lines = [
        textwrap.fill(f"{key}: {value}", 80, subsequent_indent="    ") for key, value in header
    ]
    half = (len(lines) + 1) // 2
    for column, chunk in enumerate((lines[:half], lines[half:])):
        text.text(
            0.01 + 0.5 * column, 0.95, "\n".join(chunk), va="top", ha="left",
            family="monospace", fontsize=10, transform=text.transAxes, parse_math=False,
        )  # fmt: skip
    text.set_title("surge job report", loc="left", fontweight="bold", fontsize=14)
    for index, spec in enumerate(PLOTS):
        ax = figure.add_subplot(grid[1 + index // columns, index % columns])
        note = spec.draw(ax, data)
        ax.set_title(spec.title, loc="left", fontweight="bold")
        if note is None:
            ax.grid(alpha=0.3)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(
                0.5, 0.5, note, ha="center", va="center", wrap=True, transform=ax.transAxes,
                parse_math=False,
            )  # fmt: skip
    return _png(figure)
