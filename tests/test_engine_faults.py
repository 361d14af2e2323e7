"""Job-level faults stop the run: a refused key, a spent quota, an endpoint nobody answers."""

from __future__ import annotations

import asyncio
import math
import socket
from typing import Any

import httpx
import openai
import pytest

import surge
import surge.sim
from surge.testing import run


def chat_body(i: int) -> dict[str, Any]:
    return {"model": "sim-small", "messages": [{"role": "user", "content": f"item {i}"}]}


def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_key_stops_the_run_after_a_handful_of_attempts() -> None:
    calls = 0

    async def call(i: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(1.0)
        raise surge.error_for_status(401, "invalid api key")

    async def main() -> tuple[surge.Run[int], list[surge.Result[int]]]:
        stream = surge.as_completed(call, range(500), concurrency=8)
        return stream, [r async for r in stream]

    stream, results = run(main())
    assert calls == 8  # the first wave; nothing after the first 401
    assert len(results) == 500
    assert isinstance(stream.fault, surge.AuthenticationError)
    assert stream.statistics().stopped == "job_fault"
    by_status = {s: sum(r.status == s for r in results) for s in ("cancelled", "not_started")}
    assert by_status == {"cancelled": 8, "not_started": 492}
    assert all(r.error is stream.fault for r in results if r.status == "not_started")
    assert not any(r.status == "failed" for r in results)


def test_stop_on_fault_false_tries_every_item() -> None:
    async def call(i: int) -> int:
        raise surge.error_for_status(403)

    results = run(surge.gather(call, range(50), concurrency=8, stop_on_fault=False))
    assert [r.status for r in results] == ["failed"] * 50
    assert all(r.attempts == 1 for r in results)
    assert results.fault is None


def test_gather_results_carry_the_fault() -> None:
    async def call(i: int) -> int:
        await asyncio.sleep(0.1)
        raise surge.error_for_status(401)

    results = run(surge.gather(call, range(50), concurrency=8))
    assert isinstance(results.fault, surge.AuthenticationError)
    assert [r.status for r in results].count("not_started") == 42


def test_stop_on_fault_is_validated() -> None:
    with pytest.raises(TypeError, match="HINT"):
        surge.as_completed(asyncio.sleep, [1], stop_on_fault="yes")  # type: ignore[arg-type]


def test_a_spent_quota_stops_the_run_and_is_never_retried() -> None:
    body = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                      "code": "insufficient_quota"}}  # fmt: skip
    calls = 0

    async def call(i: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.5)
        raise surge.error_for_status(429, "quota", {"retry-after": "1"}, body)

    async def main() -> surge.Run[int]:
        stream = surge.as_completed(call, range(100), concurrency=4, max_retries=10)
        async for _ in stream:
            pass
        return stream

    stream = run(main())
    assert calls == 4
    assert isinstance(stream.fault, surge.QuotaExceededError)
    assert stream.statistics().retries == 0


def run_through_outage(
    *, until: float, items: int, max_retries: int
) -> tuple[surge.Run[int], list[surge.Result[int]]]:
    """Calls of 1 s, 10 at a time, to a server that refuses connections from t=5 s to `until`."""

    async def call(i: int) -> int:
        if 5.0 <= asyncio.get_running_loop().time() < until:
            raise ConnectionRefusedError(111, "Connection refused")
        await asyncio.sleep(1.0)
        return i

    async def main() -> tuple[surge.Run[int], list[surge.Result[int]]]:
        stream = surge.as_completed(
            call, range(items), concurrency=10, max_retries=max_retries, seed=1
        )
        return stream, [r async for r in stream]

    return run(main())


def test_a_brief_outage_mid_run_is_retried_not_stopped() -> None:
    stream, results = run_through_outage(until=8.0, items=200, max_retries=8)
    assert stream.fault is None and stream.statistics().stopped is None
    assert all(r.ok for r in results)
    assert stream.statistics().retries >= 10  # the outage was met, and waited out


def test_a_long_outage_mid_run_stops_the_run() -> None:
    stream, results = run_through_outage(until=math.inf, items=1000, max_retries=20)
    assert isinstance(stream.fault, surge.ConnectError)
    assert stream.statistics().stopped == "job_fault"
    assert sum(r.ok for r in results) == 50  # the five seconds before the outage
    assert sum(r.status == "not_started" for r in results) >= 900


def test_401_from_the_simulator_with_the_openai_sdk() -> None:
    async def main() -> tuple[surge.Run[Any], list[surge.Result[Any]], dict[str, Any]]:
        async with surge.sim.serve(profile="fast", api_keys=["right"]) as server:
            client = openai.AsyncOpenAI(base_url=server.url, api_key="wrong", max_retries=0)

            async def call(i: int) -> Any:
                return await client.chat.completions.create(**chat_body(i))

            stream = surge.as_completed(call, range(500), concurrency=10)
            results = [r async for r in stream]
            await client.close()
            return stream, results, server.stats()

    stream, results, stats = asyncio.run(main())
    assert stats["requests"] <= 10
    assert stats["by_status"] == {"401": stats["requests"]}
    assert isinstance(stream.fault, surge.AuthenticationError)
    assert stream.fault.status_code == 401
    assert sum(r.status == "not_started" for r in results) >= 490


@pytest.mark.parametrize("concurrency", [1, 10])
def test_a_refused_connection_stops_within_a_few_attempts(concurrency: int) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"

    async def main() -> tuple[surge.Run[Any], list[surge.Result[Any]]]:
        async with httpx.AsyncClient(base_url=url) as client:

            async def call(i: int) -> httpx.Response:
                return (
                    await client.post("/chat/completions", json=chat_body(i))
                ).raise_for_status()

            stream = surge.as_completed(call, range(300), concurrency=concurrency)
            return stream, [r async for r in stream]

    stream, results = asyncio.run(main())
    assert isinstance(stream.fault, surge.ConnectError)
    assert stream.statistics().attempts <= max(3, concurrency)
    assert sum(r.status == "not_started" for r in results) >= 300 - max(3, concurrency)
    assert not any(r.status == "failed" for r in results)


def test_classify_tells_a_spent_quota_and_a_refused_connection_apart() -> None:
    request = httpx.Request("POST", "https://api.example.com/v1/chat/completions")
    quota = {"message": "You exceeded your current quota", "type": "insufficient_quota",
             "code": "insufficient_quota"}  # fmt: skip
    import httpx2

    sdk_request = httpx2.Request("POST", "https://api.example.com/v1/chat/completions")
    sdk_response = httpx2.Response(429, request=sdk_request, json={"error": quota})
    spent = openai.RateLimitError("quota", response=sdk_response, body=quota)
    assert isinstance(surge.classify(spent), surge.QuotaExceededError)
    limited = openai.RateLimitError(
        "slow down", response=sdk_response, body={"code": "rate_limit_exceeded"}
    )
    assert type(surge.classify(limited)) is surge.RateLimitError
    raw = httpx.Response(429, request=request, json={"error": quota})
    http_error = httpx.HTTPStatusError("429", request=request, response=raw)
    assert isinstance(surge.classify(http_error), surge.QuotaExceededError)
    assert isinstance(surge.error_for_status(429, body=b'{"error": {"code": "x"}}'),
                      surge.RateLimitError)  # fmt: skip

    assert isinstance(surge.classify(ConnectionRefusedError()), surge.ConnectError)
    assert isinstance(surge.classify(socket.gaierror(-2, "Name or service not known")),
                      surge.ConnectError)  # fmt: skip
    assert isinstance(surge.classify(httpx.ConnectError("refused")), surge.ConnectError)
    # A host that never answers the handshake: nothing was sent either.
    assert isinstance(surge.classify(httpx.ConnectTimeout("timed out")), surge.ConnectError)
    assert type(surge.classify(httpx.ReadTimeout("slow"))) is surge.AttemptTimeout
    # A reset connection had been made: a plain transport error, not a job-level fault.
    reset = surge.classify(ConnectionResetError())
    assert type(reset) is surge.TransportError


def test_the_openai_sdk_connection_error_is_a_connect_error() -> None:
    async def main() -> BaseException:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{closed_port()}/v1", api_key="k", max_retries=0
        )
        try:
            await client.chat.completions.create(**chat_body(0))
        except openai.APIConnectionError as exc:
            return exc
        finally:
            await client.close()
        raise AssertionError("the call should have failed")

    error = asyncio.run(main())
    assert isinstance(surge.classify(error), surge.ConnectError)
