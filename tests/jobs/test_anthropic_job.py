"""`surge run` under Anthropic's limits: output tokens reserved by the max_tokens surge
sends, ITPM/OTPM learned from `anthropic-ratelimit-*` headers, and a 429 that is never
an item's last word while the provider keeps answering others."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from tests.jobs.conftest import read_jsonl, write_batch

import surge
import surge.sim
from surge._feedback import parse_rate_limit_headers
from surge.jobs import JobSettings, run_job
from surge.jobs.tokens import ANTHROPIC_DEFAULT_MAX_TOKENS, max_output_tokens


def run(settings: JobSettings) -> Any:
    return asyncio.run(run_job(settings))


def prompts(path: Path, n: int) -> Path:
    """Prompts with no max_tokens: surge sends Anthropic its default of 1,024."""
    path.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": f"Question {i}: name a colour."}) + "\n"
            for i in range(n)
        )
    )
    return path


def anthropic_job(
    server: surge.sim.SimServer, tmp_path: Path, source: Path, **changes: Any
) -> JobSettings:
    values: dict[str, Any] = {
        "input": str(source),
        "output": str(tmp_path / "out.jsonl"),
        "model": "sim-small",
        "endpoint": "/v1/chat/completions",
        "provider": "anthropic",
        "base_url": server.base_url + "/v1",
        "concurrency": 16,
        "max_retries": 4,
        "timeout": 5.0,
        "cache": False,
    }
    values.update(changes)
    return JobSettings(**values)


def test_the_injected_max_tokens_is_what_a_request_may_cost() -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert max_output_tokens(chat, provider="anthropic") == ANTHROPIC_DEFAULT_MAX_TOKENS == 1024
    assert max_output_tokens({**chat, "max_tokens": 50}, provider="anthropic") == 50
    assert max_output_tokens({**chat, "max_completion_tokens": 70}, provider="openai") == 70
    assert max_output_tokens(chat, provider="openai") is None  # nothing caps it
    assert max_output_tokens({"input": "text"}, provider="openai") == 0  # embeddings


def test_input_and_output_token_buckets_follow_anthropic_headers() -> None:
    in_six_seconds = datetime.fromtimestamp(time.time() + 6, tz=timezone.utc).isoformat()
    headers = {
        "anthropic-ratelimit-input-tokens-limit": "50000",
        "anthropic-ratelimit-input-tokens-remaining": "49000",
        "anthropic-ratelimit-output-tokens-limit": "10000",
        "anthropic-ratelimit-output-tokens-remaining": "2000",
        "anthropic-ratelimit-output-tokens-reset": in_six_seconds,
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
    }
    limiter = surge.Limiter(concurrency=4)

    async def main() -> dict[str, tuple[float, float]]:
        limiter.observe(parse_rate_limit_headers(headers))
        return {b.name: (b.rate_per_minute, b.level) for b in limiter.statistics().buckets}

    buckets = asyncio.run(main())
    assert buckets["input_tokens"][0] == pytest.approx(50_000)
    assert buckets["output_tokens"][0] == pytest.approx(10_000)
    # What remains, and room for what refills by the reset: 2,000 + 6 s x 10k/60.
    assert buckets["output_tokens"][1] == pytest.approx(2_000, abs=5)
    assert limiter.statistics().buckets[-1].capacity == pytest.approx(3_000, abs=20)
    assert buckets["requests"][0] == pytest.approx(50)


def test_twenty_prompts_without_max_tokens_stay_under_the_output_token_limit(
    tmp_path: Path,
) -> None:
    # anthropic-tier1's shape, sped up: the server charges each request's max_tokens
    # (1,024, as surge sends none was given) against 10k output tokens/s, 3k at once:
    # at most 2 requests at a time. Reserving 0 output tokens sent 81 for 20 items
    # (73 refused, 12 items failed as rate_limited).
    with surge.sim.serve_in_thread(
        profile="fast", otpm=600_000, itpm=6_000_000, rpm=60_000, burst_seconds=0.3
    ) as server:
        report = run(anthropic_job(server, tmp_path, prompts(tmp_path / "in.jsonl", 20)))
        stats = server.stats()
    assert report.outcome == "complete" and report.summary.done == 20
    refused = stats["by_status"].get("429", 0)
    assert refused <= 1, f"{refused} requests refused for output tokens"
    assert stats["requests"] <= 21
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert all(line["response"]["body"]["type"] == "message" for line in lines)


def test_a_429_goes_back_in_the_queue_while_others_are_answered(tmp_path: Path) -> None:
    # The user claims 6,000 RPM; the server allows 600 with room for 2 at once. The first
    # wave of 16 is mostly refused and, with no retries left, each refused item waits at
    # the back of the queue for its turn instead of being recorded as failed.
    with surge.sim.serve_in_thread(profile="fast", rpm=600, burst_seconds=0.2) as server:
        source = write_batch(tmp_path / "in.jsonl", 24)
        report = run(
            anthropic_job(server, tmp_path, source, provider="openai", base_url=server.url,
                          model=None, endpoint=None, rpm=6000, max_retries=0)
        )  # fmt: skip
        stats = server.stats()
    assert stats["by_status"].get("429", 0) > 0, "the test must provoke 429s"
    assert report.outcome == "complete"
    assert report.summary.done == 24 and report.summary.failed == 0
    assert report.exit_code == 0
