"""The simulator observed through the official openai and anthropic SDKs, unchanged."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anthropic
import openai
import pytest

from surge.sim import (
    Faults,
    SimConfig,
    embedding_vector,
    expected_reply,
    parse_duration,
    serve,
    serve_in_thread,
)

MESSAGES: list[Any] = [{"role": "user", "content": "Summarize topic 1 in 5 words"}]


def oai(url: str, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=url, api_key=kwargs.pop("api_key", "k"), max_retries=0, **kwargs
    )


def claude(url: str, **kwargs: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=url, api_key=kwargs.pop("api_key", "k"), max_retries=0, **kwargs
    )


async def test_openai_chat_plain_and_streamed() -> None:
    async with serve() as server, oai(server.url) as client:
        r = await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5)
        body = {"messages": MESSAGES, "max_tokens": 5}
        assert r.choices[0].message.content == expected_reply(body).text
        assert r.choices[0].finish_reason == "length"
        assert r.usage is not None and r.usage.completion_tokens == 5
        stream = await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        want = expected_reply({"messages": MESSAGES})
        assert text == want.text
        assert usage is not None and usage.completion_tokens == want.output_tokens


async def test_openai_embeddings_default_encoding() -> None:
    async with serve(embedding_dim=16) as server, oai(server.url) as client:
        r = await client.embeddings.create(model="e", input=["a", "b"])
        assert len(r.data) == 2
        assert r.data[1].embedding == pytest.approx(embedding_vector("b", 16), rel=1e-6)
        r = await client.embeddings.create(model="e", input="a", dimensions=3)
        assert r.data[0].embedding == pytest.approx(embedding_vector("a", 3), rel=1e-6)


async def test_openai_rate_limit_error_carries_the_headers() -> None:
    async with (
        serve(rpm=600, tpm=1_000_000, burst_seconds=0.1) as server,
        oai(server.url) as client,
    ):
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
        assert raw.headers["x-ratelimit-limit-requests"] == "600"
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        error = caught.value
        assert error.code == "rate_limit_exceeded" and error.type == "requests"
        assert 0 < float(error.response.headers["retry-after-ms"]) <= 100
        assert parse_duration(error.response.headers["x-ratelimit-reset-requests"]) <= 0.1


async def test_openai_errors_map_to_the_sdk_exceptions() -> None:
    async with serve(api_keys=frozenset({"k"})) as server, oai(server.url) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "SURGE_POISON"}]
            )
        with pytest.raises(openai.AuthenticationError):
            async with oai(server.url, api_key="wrong") as other:
                await other.chat.completions.create(model="m", messages=MESSAGES)
        for code, exc in (
            ("500", openai.InternalServerError),
            ("502", openai.InternalServerError),
            ("503", openai.InternalServerError),
        ):
            with pytest.raises(exc) as caught:
                await client.chat.completions.create(
                    model="m", messages=MESSAGES, extra_headers={"x-sim-fault": code}
                )
            assert caught.value.status_code == int(code)


async def test_openai_transport_faults() -> None:
    async with serve(faults=Faults(slow_seconds=0.2)) as server, oai(server.url) as client:

        async def call(fault: str, **kw: Any) -> Any:
            return await client.chat.completions.create(
                model="m", messages=MESSAGES, extra_headers={"x-sim-fault": fault}, **kw
            )

        with pytest.raises(openai.APITimeoutError):
            await call("hang", timeout=0.2)
        with pytest.raises(openai.APIConnectionError):
            await call("reset")
        with pytest.raises(ValueError):  # truncated JSON
            await call("malformed")
        start = time.perf_counter()
        slow = await call("slow")
        assert time.perf_counter() - start >= 0.15
        assert slow.choices[0].message.content == expected_reply({"messages": MESSAGES}).text
        with pytest.raises(openai.APITimeoutError):
            await call("slow", timeout=0.02)
        with pytest.raises(openai.APIConnectionError):
            stream = await call("reset", stream=True)
            async for _ in stream:
                pass


async def test_anthropic_messages_plain_and_streamed() -> None:
    async with serve() as server, claude(server.base_url) as client:
        m = await client.messages.create(model="c", max_tokens=4, messages=MESSAGES)
        body = {"messages": MESSAGES, "max_tokens": 4}
        assert m.content[0].type == "text" and m.content[0].text == expected_reply(body).text
        assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 4
        async with client.messages.stream(model="c", max_tokens=1000, messages=MESSAGES) as s:
            final = await s.get_final_message()
            text = await s.get_final_text()
        want = expected_reply({"messages": MESSAGES})
        assert text == want.text and final.stop_reason == "end_turn"
        assert final.usage.output_tokens == want.output_tokens


async def test_anthropic_limits_and_errors() -> None:
    cfg = SimConfig(rpm=60, itpm=60_000, otpm=6_000, burst_seconds=1, api_keys=frozenset({"k"}))
    async with serve(cfg) as server, claude(server.base_url) as client:
        raw = await client.messages.with_raw_response.create(
            model="c", max_tokens=10, messages=MESSAGES
        )
        assert raw.headers["anthropic-ratelimit-output-tokens-remaining"] == "90"
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(model="c", max_tokens=10, messages=MESSAGES)
        assert caught.value.response.headers["retry-after"] == "1"
        with pytest.raises(anthropic.AuthenticationError):
            async with claude(server.base_url, api_key="bad") as other:
                await other.messages.create(model="c", max_tokens=10, messages=MESSAGES)
        server.reset()
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.create(
                model="c", max_tokens=10, messages=[{"role": "user", "content": "SURGE_POISON"}]
            )
        server.reset()
        with pytest.raises(anthropic.APIStatusError) as status:
            await client.messages.create(
                model="c", max_tokens=10, messages=MESSAGES, extra_headers={"x-sim-fault": "503"}
            )
        assert status.value.status_code == 503


async def test_seeded_chaos_gives_the_same_outcomes_through_the_sdk() -> None:
    cfg = SimConfig(seed=5, faults=Faults.uniform_5xx(0.3, reset=0.1, malformed=0.1))

    async def outcomes() -> list[str]:
        async with serve(cfg) as server, oai(server.url) as client:

            async def one(i: int) -> str:
                try:
                    await client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": str(i)}]
                    )
                except openai.APIStatusError as exc:
                    return str(exc.status_code)
                except Exception as exc:
                    return type(exc).__name__
                return "ok"

            return list(await asyncio.gather(*(one(i) for i in range(30))))

    first = await outcomes()
    assert first == await outcomes()
    assert {"ok", "500"} <= set(first) and len(set(first)) >= 4


def test_sync_sdks_against_a_server_in_a_thread() -> None:
    with serve_in_thread(rpm=6000) as server:
        client = openai.OpenAI(base_url=server.url, api_key="k", max_retries=0)
        with client:
            r = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
        assert (
            r.choices[0].message.content
            == expected_reply({"messages": MESSAGES, "max_tokens": 3}).text
        )
        with anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0) as c:
            c.messages.create(model="c", max_tokens=3, messages=MESSAGES)
        stats = server.stats()
        assert stats["requests"] == 2 and stats["by_key"]["k"]["by_status"] == {"200": 2}
        server.reset()
        assert server.stats()["requests"] == 0
    assert server.stats()["requests"] == 0  # still readable once stopped
