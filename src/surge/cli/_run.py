"""`surge run` and `surge status`: crash-safe batch jobs from files."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from surge.cli import app
from surge.jobs import JobInputError, JobReport, JobSettings, JobSummary, Journal, run_job
from surge.jobs._estimate import CostEstimate
from surge.jobs.journal import lock_holder
from surge.jobs.progress import ProgressDisplay
from surge.jobs.tokens import ASSUMED_OUTPUT_TOKENS


def _parse_param(values: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for text in values:
        key, sep, raw = text.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{text!r}: expected KEY=VALUE, e.g. temperature=0.2")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


@app.command()
def run(
    input: str = typer.Argument(
        ..., help="Input file (OpenAI Batch JSONL, JSONL, CSV, Parquet) or - for stdin."
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Output file: .jsonl (Batch output format), .csv or .parquet."
    ),
    base_url: str | None = typer.Option(None, help="API base URL, e.g. http://127.0.0.1:8000/v1."),
    model: str | None = typer.Option(None, help="Model for lines that do not name one."),
    provider: str = typer.Option(
        "openai", help="openai (any OpenAI-compatible endpoint), anthropic, local."
    ),
    api_key_env: str | None = typer.Option(None, help="Environment variable holding the API key."),
    concurrency: int = typer.Option(50, help="Most requests in flight at once."),
    rpm: float | None = typer.Option(
        None, help="Requests per minute (default: follow the server's headers)."
    ),
    tpm: float | None = typer.Option(
        None, help="Tokens per minute (default: follow the server's headers)."
    ),
    itpm: float | None = typer.Option(None, help="Input tokens per minute (Anthropic)."),
    otpm: float | None = typer.Option(None, help="Output tokens per minute (Anthropic)."),
    shared_limit: str | None = typer.Option(
        None,
        "--shared-limit",
        help="Share the limits with every job on the same key in this store, e.g. "
        "redis://localhost:6379/0.",
    ),
    shared_key: str | None = typer.Option(
        None, "--shared-key", help="Name of the shared limit (default: provider and base URL)."
    ),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Send the requests from Ray workers (a local Ray unless --ray-address).",
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster for --ray: HOST:PORT, ray://HOST:10001 or auto."
    ),
    ray_workers: int = typer.Option(2, "--ray-workers", help="Ray workers sending for --ray."),
    max_retries: int = typer.Option(5, help="Retries per request after the first attempt."),
    timeout: float = typer.Option(300.0, help="Seconds per attempt."),
    order: str = typer.Option("input", help="Output order: input or completion."),
    max_cost: float | None = typer.Option(
        None,
        help="Budget in USD: spent plus the ceiling of every request in flight never passes it.",
    ),
    max_failures: int | None = typer.Option(
        None,
        help="Stop dispatching once this many items are recorded failed in this run (a 429 "
        "put back in the queue is not a failure).",
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Estimate tokens and cost (input-only floor to max_tokens ceiling); send and write nothing.",
    ),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Do not answer identical requests from the cache."
    ),
    format: str | None = typer.Option(
        None, "--format", help="batch, jsonl, csv or parquet (default: detect)."
    ),
    endpoint: str | None = typer.Option(
        None, help="For JSONL/CSV/Parquet: /v1/chat/completions, /v1/embeddings or /v1/messages."
    ),
    prompt_column: str | None = typer.Option(None, help="CSV/Parquet column holding the prompt."),
    template: str | None = typer.Option(
        None, help='CSV/Parquet prompt template, e.g. "Summarize: {text}".'
    ),
    id_column: str | None = typer.Option(None, help="CSV/Parquet column holding the id."),
    param: list[str] = typer.Option(
        [], "--param", help="Default body parameter KEY=VALUE (repeatable), e.g. max_tokens=256."
    ),
    journal: Path | None = typer.Option(None, help="Journal path (default: OUTPUT.journal)."),
    prices: Path | None = typer.Option(None, help="JSON price table overriding the built-in one."),
    embed_batch: int = typer.Option(64, help="Embedding inputs packed into one request."),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Send the job's failed items again."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing OUTPUT that no surge journal belongs to."
    ),
    recover: bool = typer.Option(
        False,
        "--recover",
        help="Rebuild a lost or damaged journal: the answers OUTPUT holds are not asked again.",
    ),
    json_summary: bool = typer.Option(
        False, "--json-summary", help="Print the summary as JSON on stdout."
    ),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Live progress (a log line when not on a terminal)."
    ),
) -> None:
    """Run a batch file at the speed of the rate limit. Rerun the same command to resume."""
    settings = JobSettings(
        input=input, output=str(output), journal=str(journal) if journal else None, format=format,
        model=model, endpoint=endpoint, prompt_column=prompt_column, template=template,
        id_column=id_column, defaults=_parse_param(param), provider=provider, base_url=base_url,
        api_key_env=api_key_env, concurrency=concurrency, rpm=rpm, tpm=tpm, itpm=itpm, otpm=otpm, max_retries=max_retries,
        shared_limit=shared_limit, shared_key=shared_key,
        ray=ray or ray_address is not None, ray_address=ray_address, ray_workers=ray_workers,
        timeout=timeout, order=order, max_cost=max_cost, max_failures=max_failures, dry_run=dry_run,
        cache=not no_cache, prices=str(prices) if prices else None, embed_batch=embed_batch,
        retry_failed=retry_failed, overwrite=overwrite, recover=recover,
    )  # fmt: skip
    err = Console(stderr=True)
    try:
        report = asyncio.run(run_job(settings, display=ProgressDisplay(enabled=progress)))
    except JobInputError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:  # Ctrl-C before the run installed its own handler
        err.print("interrupted; nothing lost: rerun the same command to resume")
        raise typer.Exit(130) from None
    if report.summary.total == 0:  # not an error (a query may select nothing), but say so
        source = "stdin" if input == "-" else input
        err.print(
            f"[yellow]warning:[/] {source} holds no requests (it is empty): nothing was sent.",
            highlight=False,
        )
    if json_summary:
        print(json.dumps(_summary_json(report, settings)))
    else:
        _print_report(report, settings, err)
    raise typer.Exit(report.exit_code)


@app.command()
def status(
    output: Path = typer.Argument(..., help="The job's output file (its journal lies beside it)."),
    journal: Path | None = typer.Option(None, help="Journal path (default: OUTPUT.journal)."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Summarise a job: done, failed by reason, pending, tokens, cost."""
    path = journal or Path(f"{output}.journal")
    try:  # read-only and without the lock: works beside the run that holds it
        store = Journal(path, readonly=True)
        try:
            summary = store.summary()
        finally:
            store.close()
    except JobInputError as exc:  # missing, damaged, not a journal: said with a HINT
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    holder = lock_holder(path)
    if json_output:
        out = _summary_dict(summary)
        out["running"] = None if holder is None else asdict(holder)
        print(json.dumps(out))
    else:
        Console().print(_summary_table(summary, title=f"job {output}"))
        if holder is not None:
            Console().print(f"running now: {holder.describe()}", highlight=False)


def _summary_dict(summary: JobSummary) -> dict[str, Any]:
    return {
        "total": summary.total, "done": summary.done, "failed": summary.failed,
        "invalid": summary.invalid, "pending": summary.pending,
        "failed_by_reason": summary.failed_by_reason, "input_tokens": summary.input_tokens,
        "output_tokens": summary.output_tokens,
        "cost_usd": None if summary.unpriced else round(summary.cost, 6),
        "cached": summary.cached, "unpriced": summary.unpriced,
    }  # fmt: skip


def _summary_json(report: JobReport, settings: JobSettings) -> dict[str, Any]:
    out = _summary_dict(report.summary)
    out.update(outcome=report.outcome, wall_seconds=round(report.wall_seconds, 3))
    if report.stopped_reason:
        out["stopped_reason"] = report.stopped_reason
    if report.statistics is not None:
        out.update(retries=report.statistics.retries, rate_limited=report.statistics.rate_limited)
    if report.estimate is not None:
        out["estimate"] = asdict(report.estimate)
    if report.fault is not None:
        out["fault"] = report.fault
    if report.output is not None:
        out.update(output=str(report.output), errors=str(report.errors))
    return out


def _summary_table(summary: JobSummary, *, title: str) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("lines", f"{summary.total:,}")
    table.add_row(
        "done",
        f"{summary.done:,}" + (f" ({summary.cached:,} from cache)" if summary.cached else ""),
    )
    table.add_row("failed", f"{summary.failed:,}")
    for reason, count in summary.failed_by_reason.items():
        table.add_row(f"  {reason}", f"{count:,}")
    table.add_row("invalid input lines", f"{summary.invalid:,}")
    table.add_row("pending", f"{summary.pending:,}")
    table.add_row("tokens in / out", f"{summary.input_tokens:,} / {summary.output_tokens:,}")
    table.add_row("cost", _cost_text(summary))
    return table


def _cost_text(summary: JobSummary) -> str:
    if not summary.unpriced:
        return f"${summary.cost:,.4f}"
    if summary.unpriced == summary.done:
        return "unknown (no price for the model; pass --prices FILE)"
    return f"${summary.cost:,.4f} + unknown ({summary.unpriced:,} items with no price)"


def _usd(amount: float) -> str:
    # Small jobs cost fractions of a cent: keep two significant digits visible.
    return f"${amount:,.4f}" if amount >= 0.01 or amount == 0 else f"${amount:.6f}"


def _print_estimate(estimate: CostEstimate, console: Console) -> None:
    if estimate.cost_floor is None or estimate.cost_ceiling is None:
        cost = (
            f"cost unknown: no price for {', '.join(map(repr, estimate.unpriced_models))}. "
            "HINT: pass --prices FILE with their USD per million tokens."
        )
    else:
        cost = (
            f"cost {_usd(estimate.cost_floor)} (input only) to {_usd(estimate.cost_ceiling)} "
            "(every request writing its max_tokens)."
        )
    console.print(
        f"dry run: {estimate.requests:,} requests to send, about {estimate.input_tokens:,} "
        f"input tokens and at most {estimate.output_tokens:,} output tokens; {cost}",
        highlight=False,
    )
    if estimate.uncapped:
        console.print(
            f"{estimate.uncapped:,} requests set no max_tokens: counted at "
            f"{ASSUMED_OUTPUT_TOKENS:,} output tokens each, but the model may write more. "
            "HINT: --param max_tokens=N makes the ceiling firm.",
            highlight=False,
        )
    console.print("Nothing sent, nothing written.")


def _print_report(report: JobReport, settings: JobSettings, console: Console) -> None:
    if report.estimate is not None:
        _print_estimate(report.estimate, console)
        return
    console.print(
        _summary_table(
            report.summary, title=f"surge run: {report.outcome} in {report.wall_seconds:,.1f}s"
        )
    )
    if report.statistics is not None:
        s = report.statistics
        console.print(
            f"{s.attempts:,} attempts, {s.retries:,} retries, {s.rate_limited:,} answered 429"
        )
    if report.output is not None:
        console.print(f"output: {report.output}   errors: {report.errors}")
    if report.summary.cached:
        console.print(
            f"{report.summary.cached:,} answered from the cache (the same request to the same "
            "server, asked before); --no-cache asks again.",
            highlight=False,
        )
    if report.fault is not None:
        console.print(f"[red]stopped:[/] {escape(report.fault)}", highlight=False)
    if report.outcome in ("interrupted", "stopped") or report.summary.pending:
        why = f" ({report.stopped_reason})" if report.stopped_reason else ""
        then = "Once that is fixed, resume" if report.fault else "Resume"
        console.print(
            f"[yellow]{report.summary.pending:,} items not yet sent{why}.[/] {then} with the same command:"
        )
        console.print("  " + " ".join(_shell_quote(a) for a in sys.argv), highlight=False)


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
