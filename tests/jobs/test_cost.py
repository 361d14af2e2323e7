"""Cost you can trust: `--max-cost` and `--dry-run` count every output token a request
may be billed for (its max_tokens, or the model's default), a dry run writes nothing
and prints a range, and a model with no known price costs "unknown", never $0."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from tests.jobs.conftest import write_batch
from typer.testing import CliRunner

import surge.sim
from surge.cli import app
from surge.jobs import JobReport, JobSettings, run_job
from surge.jobs.pricing import PriceTable
from surge.jobs.tokens import ASSUMED_OUTPUT_TOKENS, estimate_input_tokens


def run(settings: JobSettings) -> JobReport:
    return asyncio.run(run_job(settings))


def prompts(path: Path, n: int, **body: Any) -> Path:
    """Prompts that set no max_tokens unless `body` gives one."""
    path.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": f"Question {i}: name a colour.", **body}) + "\n"
            for i in range(n)
        )
    )
    return path


def settings(server: surge.sim.SimServer, tmp_path: Path, **changes: Any) -> JobSettings:
    values: dict[str, Any] = {
        "input": str(tmp_path / "in.jsonl"),
        "output": str(tmp_path / "out.jsonl"),
        "model": "sim-small",
        "endpoint": "/v1/chat/completions",
        "provider": "anthropic",
        "base_url": server.base_url + "/v1",
        "concurrency": 16,
        "max_retries": 2,
        "timeout": 5.0,
        "cache": False,
    }
    values.update(changes)
    return JobSettings(**values)


def test_max_cost_counts_the_max_tokens_surge_sends_and_is_never_passed(tmp_path: Path) -> None:
    # Output at $1,000 per million tokens: each reply (10-40 tokens) costs up to $0.04,
    # and each request may cost $1.024 (the 1,024 tokens surge asks Anthropic for). Counting
    # no output (as before), 16 requests went out at once and the job spent past the budget.
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"sim-small": {"input": 0.0, "output": 1000.0}}))
    prompts(tmp_path / "in.jsonl", 200)
    budget = 3.0
    with surge.sim.serve_in_thread(profile="fast") as server:
        report = run(settings(server, tmp_path, max_cost=budget, prices=str(prices)))
    assert report.outcome == "stopped" and report.stopped_reason == "max_cost"
    assert 0 < report.summary.cost <= budget
    assert 0 < report.summary.done < 200
    assert report.summary.pending == 200 - report.summary.done


def test_a_dry_run_writes_nothing_exits_0_and_prints_a_range(tmp_path: Path) -> None:
    prompts(tmp_path / "in.jsonl", 10, max_tokens=100)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(
        app,
        ["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
         "--model", "gpt-4o-mini", "--dry-run", "--json-summary"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "no journal, no output"
    estimate = json.loads(result.stdout.strip().splitlines()[-1])["estimate"]
    inputs = 10 * estimate_input_tokens(
        {"messages": [{"role": "user", "content": "Question 0: name a colour."}]}
    )
    assert estimate["requests"] == 10 and estimate["input_tokens"] == inputs
    assert estimate["output_tokens"] == 10 * 100
    price = PriceTable.default().lookup("gpt-4o-mini")
    assert price is not None
    assert estimate["cost_floor"] == pytest.approx(inputs * price.input_per_million / 1e6)
    assert estimate["cost_ceiling"] == pytest.approx(
        (inputs * price.input_per_million + 1000 * price.output_per_million) / 1e6
    )
    printed = CliRunner().invoke(
        app,
        ["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
         "--model", "gpt-4o-mini", "--dry-run"],
    )  # fmt: skip
    assert printed.exit_code == 0
    words = " ".join(printed.output.split())
    assert "(input only) to $" in words and "Nothing sent, nothing written." in words


def test_requests_without_max_tokens_count_the_model_default_never_zero(tmp_path: Path) -> None:
    prompts(tmp_path / "in.jsonl", 4)
    common = {"input": str(tmp_path / "in.jsonl"), "output": str(tmp_path / "out.jsonl"),
              "endpoint": "/v1/chat/completions", "dry_run": True}  # fmt: skip
    claude = run(JobSettings(**common, model="claude-3-5-haiku", provider="anthropic"))
    gpt = run(JobSettings(**common, model="gpt-4o-mini"))
    assert claude.estimate is not None and gpt.estimate is not None
    assert claude.estimate.output_tokens == 4 * 1024 and claude.estimate.uncapped == 0
    assert gpt.estimate.output_tokens == 4 * ASSUMED_OUTPUT_TOKENS and gpt.estimate.uncapped == 4
    for estimate in (claude.estimate, gpt.estimate):
        assert estimate.cost_floor is not None and estimate.cost_ceiling is not None
        assert 0 < estimate.cost_floor < estimate.cost_ceiling
    assert claude.exit_code == 0 and not (tmp_path / "out.jsonl.journal").exists()


def test_a_dry_run_on_a_started_job_counts_what_is_left_and_leaves_the_journal_alone(
    tmp_path: Path,
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 10)
    with surge.sim.serve_in_thread(profile="fast") as server:
        common = {"input": str(source), "output": str(tmp_path / "out.jsonl"),
                  "base_url": server.url, "cache": False}  # fmt: skip
        first = run(JobSettings(**common))
        assert first.summary.done == 10
        write_batch(source, 14)  # four more lines
        journal = tmp_path / "out.jsonl.journal"
        fingerprint = hashlib.sha256(journal.read_bytes()).hexdigest()
        dry = run(JobSettings(**common, dry_run=True))
        assert dry.estimate is not None and dry.estimate.requests == 4
        assert dry.estimate.output_tokens == 4 * 24
        assert hashlib.sha256(journal.read_bytes()).hexdigest() == fingerprint
        rest = run(JobSettings(**common))
        assert server.stats()["requests"] == 14, "the dry run neither sent nor blocked"
    assert rest.summary.done == 14 and rest.exit_code == 0


def test_a_model_with_no_known_price_costs_unknown_not_zero(tmp_path: Path) -> None:
    prompts(tmp_path / "in.jsonl", 3, max_tokens=20)
    with surge.sim.serve_in_thread(profile="fast") as server:
        args = ["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                "--model", "house-model-7b", "--base-url", server.url, "--no-progress"]  # fmt: skip
        dry = CliRunner().invoke(app, [*args, "--dry-run"])
        real = CliRunner().invoke(app, [*args, "--json-summary"])
        shown = CliRunner().invoke(app, args)  # done already: prints the summary table
    assert dry.exit_code == 0 and "cost unknown" in dry.output and "'house-model-7b'" in dry.output
    assert "$0.0000" not in dry.output
    assert real.exit_code == 0, real.output
    summary = json.loads(real.stdout.strip().splitlines()[-1])
    assert summary["done"] == 3 and summary["unpriced"] == 3 and summary["cost_usd"] is None
    assert "unknown" in shown.output and "$0.0000" not in shown.output
