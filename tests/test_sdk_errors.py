"""Result.error is the exception the call raised; Result.failure is surge's reading of it."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

import surge
import surge.sim
from surge.testing import run


def test_the_error_is_what_asyncio_gather_would_return() -> None:
    async def call(x: int) -> int:
        await asyncio.sleep(0.1)
        if x == 1:
            raise ValueError("not this one")
        if x == 2:
            raise KeyError("missing")
        return x

    async def main() -> tuple[surge.Results[int], list[Any]]:
        ours = await surge.gather(call, range(3))
        theirs = await asyncio.gather(*(call(x) for x in range(3)), return_exceptions=True)
        return ours, theirs

    ours, theirs = run(main())
    for result, expected in zip(ours, theirs, strict=True):
        if result.ok:
            assert result.value == expected and result.failure is None
        else:
            assert type(result.error) is type(expected)
            assert result.error.args == expected.args
            assert isinstance(result.failure, surge.FatalError)
            assert result.failure.reason == "call_error"


def test_a_timeout_the_call_raises_itself_is_its_own() -> None:
    async def call(x: int) -> int:
        raise TimeoutError("the call's own")

    [result] = run(surge.gather(call, [1], timeout=5.0, max_retries=0))
    assert type(result.error) is TimeoutError and str(result.error) == "the call's own"
    assert isinstance(result.failure, surge.AttemptTimeout) and result.failure.retryable


def test_retry_events_carry_the_raw_error_and_its_classification() -> None:
    events: list[surge.Event] = []
    calls = 0

    async def call(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionResetError("reset")
        return x

    run(surge.gather(call, [1], on_event=events.append, backoff=surge.constant(0.1)))
    [retry] = [e for e in events if e.kind == "retry"]
    assert type(retry.error) is ConnectionResetError
    assert isinstance(retry.failure, surge.TransportError) and retry.failure.retryable


def test_the_openai_sdk_error_comes_back_as_raised() -> None:
    async def main() -> surge.Results[Any]:
        async with surge.sim.serve(profile="fast") as server:
            client = openai.AsyncOpenAI(base_url=server.url, api_key="k", max_retries=0)

            async def call(text: str) -> Any:
                messages = [{"role": "user", "content": text}]
                return await client.chat.completions.create(model="m", messages=messages)

            results = await surge.gather(call, ["hello", f"poisoned {surge.sim.POISON}"])
            await client.close()
            return results

    ok, bad = asyncio.run(main())
    assert ok.ok and ok.value.choices[0].message.content
    assert bad.status == "failed" and bad.attempts == 1
    assert isinstance(bad.error, openai.BadRequestError)
    assert isinstance(bad.failure, surge.BadRequestError)
    assert bad.failure.status_code == 400 and bad.failure.reason == "bad_request"
    assert bad.failure.__cause__ is bad.error
    with pytest.raises(openai.BadRequestError):
        bad.unwrap()
