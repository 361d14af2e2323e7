"""surge.wire: an official SDK client whose every response's headers reach the limiter."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import anthropic
import httpx
import openai
import pytest
from tests.conftest import STALL_429S, TIGHT

import surge
import surge.sim


def ask(client: Any) -> Any:
    async def call(i: int) -> Any:
        return await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"item {i}"}], max_tokens=5
        )

    return call


async def against_sim(
    make_client: Any, n: int, sim: dict[str, Any], **options: Any
) -> tuple[surge.Results[Any], dict[str, Any], surge.Run[Any]]:
    async with surge.sim.serve(profile="fast", **sim) as server:
        client = make_client(server.url)
        run = surge.as_completed(ask(client), range(n), **options)
        results = surge.Results(sorted([r async for r in run], key=lambda r: r.index))
        await client.close()
        return results, server.stats(), run


def test_a_wired_client_keeps_a_run_with_no_rpm_under_the_servers_limit() -> None:
    def wired(url: str) -> Any:
        return surge.wire(openai.AsyncOpenAI(base_url=url, api_key="k"))

    results, stats, run = asyncio.run(against_sim(wired, 60, TIGHT, concurrency=50))
    assert all(r.ok for r in results)
    assert stats["by_status"].get("429", 0) <= STALL_429S
    assert stats["requests"] <= 60 + STALL_429S
    [requests] = [b for b in run.limiter.statistics().buckets if b.name == "requests"]
    assert requests.rate_per_minute == 1200  # adopted from the headers of successes


def test_unwired_the_same_run_draws_429s() -> None:
    # The control for the test above: the parsed object carries no headers, so the
    # limiter never learns the limit, and the burst past it is refused.
    def unwired(url: str) -> Any:
        return openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0)

    results, stats, _ = asyncio.run(against_sim(unwired, 60, TIGHT, concurrency=50))
    assert all(r.ok for r in results)
    assert stats["by_status"].get("429", 0) > 5 * STALL_429S


def test_with_no_limits_at_all_the_first_request_goes_alone() -> None:
    def wired(url: str) -> Any:
        return surge.wire(openai.AsyncOpenAI(base_url=url, api_key="k"))

    results, stats, _ = asyncio.run(against_sim(wired, 60, TIGHT))
    assert all(r.ok for r in results)
    assert stats["by_status"].get("429", 0) <= STALL_429S
    assert stats["requests"] <= 60 + STALL_429S


def test_a_shared_limiter_learns_through_the_wired_client_and_keeps_it_across_runs() -> None:
    async def main() -> tuple[list[surge.Results[Any]], dict[str, Any], surge.Limiter]:
        async with surge.sim.serve(profile="fast", **TIGHT) as server:
            client = surge.wire(openai.AsyncOpenAI(base_url=server.url, api_key="k"))
            limiter = surge.Limiter(concurrency=40)
            runs = [await surge.gather(ask(client), range(30), limiter=limiter) for _ in range(2)]
            # A new run with its own limiter starts from what the client learned, back to
            # back with the last: the server's bucket is empty, and it knows.
            runs.append(await surge.gather(ask(client), range(30), concurrency=40))
            await client.close()
            return runs, server.stats(), limiter

    runs, stats, limiter = asyncio.run(main())
    assert all(r.ok for results in runs for r in results)
    assert stats["by_status"].get("429", 0) <= STALL_429S
    assert "requests" in {b.name for b in limiter.statistics().buckets}


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="the timeout is held while waiting on 3.11+ only"
)
def test_waiting_for_the_limiter_does_not_count_against_the_attempt_timeout() -> None:
    # The server takes 2 at once, then 10 a second: the 30th request waits ~2.8 s for
    # its turn, well past timeout=1, yet none times out. (The timeout leaves room for a
    # loaded machine's stall after the wait; a 429 such a stall may cause fails its item,
    # as max_retries=0, but is not what this test is about.)
    def wired(url: str) -> Any:
        return surge.wire(openai.AsyncOpenAI(base_url=url, api_key="k"))

    sim = {"rpm": 600, "burst_seconds": 0.2}
    results, stats, _ = asyncio.run(
        against_sim(wired, 30, sim, concurrency=30, timeout=1.0, max_retries=0)
    )
    timed_out = [r.index for r in results if isinstance(r.error, surge.AttemptTimeout)]
    assert not timed_out
    refused = stats["by_status"].get("429", 0)
    assert [r.ok for r in results].count(False) == refused <= STALL_429S


def test_sdk_retries_underneath_surge_are_reported_once_with_a_hint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def sdk_defaults(url: str) -> Any:
        return openai.AsyncOpenAI(base_url=url, api_key="k")  # max_retries=2

    with caplog.at_level(logging.WARNING, logger="surge"):
        _, stats, _ = asyncio.run(against_sim(sdk_defaults, 60, TIGHT, concurrency=50))
    assert stats["by_status"].get("429", 0) > 0
    warnings = [r.getMessage() for r in caplog.records if "retried a request" in r.getMessage()]
    assert len(warnings) == 1
    assert "HINT" in warnings[0] and "surge.wire(" in warnings[0]


def test_a_wired_client_reports_an_sdk_retry_it_sees_go_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The SDK marks each request with its own retry count; a request marked as a retry
    # that succeeds raises nothing, and only the wired transport can see it.
    async def main() -> surge.Results[Any]:
        async with surge.sim.serve(profile="fast") as server:
            client = surge.wire(openai.AsyncOpenAI(base_url=server.url, api_key="k"))

            async def call(i: int) -> Any:
                return await client.chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": f"{i}"}],
                    extra_headers={"x-stainless-retry-count": "1" if i % 2 else "0"},
                )

            results = await surge.gather(call, range(6))
            await client.close()
            return results

    with caplog.at_level(logging.WARNING, logger="surge"):
        results = asyncio.run(main())
    assert all(r.ok for r in results)
    warnings = [r.getMessage() for r in caplog.records if "retried a request" in r.getMessage()]
    assert len(warnings) == 1 and "HINT" in warnings[0]


def test_a_wired_client_outside_a_run_is_the_client_it_was() -> None:
    async def main() -> tuple[str, int]:
        async with surge.sim.serve(profile="fast") as server:
            client = surge.wire(openai.AsyncOpenAI(base_url=server.url, api_key="k"))
            assert client.max_retries == 0
            reply = await ask(client)(0)
            await client.close()
            return reply.choices[0].message.content, server.stats()["requests"]

    text, requests = asyncio.run(main())
    assert text and requests == 1


def test_wire_takes_anthropic_and_plain_httpx_clients_too() -> None:
    async def main() -> tuple[surge.Run[Any], surge.Run[Any]]:
        async with surge.sim.serve(profile="fast", rpm=600, itpm=100_000) as server:
            root = server.url.removesuffix("/v1")  # an Anthropic base URL is the bare host
            claude = surge.wire(anthropic.AsyncAnthropic(base_url=root, api_key="k"))

            async def message(i: int) -> Any:
                return await claude.messages.create(
                    model="claude", max_tokens=5, messages=[{"role": "user", "content": f"{i}"}]
                )

            first = surge.as_completed(message, range(5))
            assert all([r.ok async for r in first])
            await claude.close()

            http = surge.wire(httpx.AsyncClient(base_url=server.url))

            async def post(i: int) -> Any:
                body = {"model": "m", "messages": [{"role": "user", "content": f"{i}"}]}
                response = await http.post("/chat/completions", json=body)
                return response.raise_for_status().json()  # headers dropped: wire has them

            second = surge.as_completed(post, range(5))
            assert all([r.ok async for r in second])
            await http.aclose()
            return first, second

    first, second = asyncio.run(main())
    assert "requests" in {b.name for b in first.limiter.statistics().buckets}
    assert "requests" in {b.name for b in second.limiter.statistics().buckets}


def test_wire_says_what_it_takes() -> None:
    with pytest.raises(TypeError, match="HINT"):
        surge.wire(object())
    with pytest.raises(TypeError, match=r"HINT: use openai\.AsyncOpenAI"):
        surge.wire(openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k"))
