"""Providers against the simulator: errors classified, headers passed on, keys scrubbed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import surge
import surge.sim
from surge.providers import AnthropicProvider, OpenAIProvider, scrub
from surge.providers._anthropic import chat_to_messages

KEY = "sk-test-0123456789abcdef"


def body(text: str = "hello") -> dict[str, Any]:
    return {"model": "sim-small", "messages": [{"role": "user", "content": text}], "max_tokens": 16}


def test_openai_provider_round_trip() -> None:
    async def main() -> surge.Reply[Any]:
        async with surge.sim.serve(profile="fast", rpm=600) as server:
            provider = OpenAIProvider(base_url=server.url, api_key=KEY)
            try:
                return await provider.send("/v1/chat/completions", body())
            finally:
                await provider.aclose()

    reply = asyncio.run(main())
    assert reply.value.status_code == 200
    assert (
        reply.value.body["choices"][0]["message"]["content"]
        == surge.sim.expected_reply(body()).text
    )
    assert reply.usage is not None and reply.usage.output_tokens > 0
    assert reply.headers is not None and "x-ratelimit-remaining-requests" in reply.headers


def test_errors_carry_status_and_never_the_key() -> None:
    async def main() -> list[BaseException]:
        async with surge.sim.serve(profile="fast", api_keys=frozenset({"the-right-key"})) as server:
            provider = OpenAIProvider(base_url=server.url, api_key=KEY)
            errors = []
            for request in (body(), body(f"x {surge.sim.POISON}")):
                try:
                    await provider.send("/v1/chat/completions", request)
                except surge.SurgeError as exc:
                    errors.append(exc)
            await provider.aclose()
            return errors

    errors = asyncio.run(main())
    assert isinstance(errors[0], surge.AuthenticationError) and errors[0].status_code == 401
    assert all(KEY not in str(e) and KEY[:10] not in str(e) for e in errors)


def test_anthropic_provider_translates_chat_requests() -> None:
    async def main() -> surge.Reply[Any]:
        async with surge.sim.serve(profile="fast") as server:
            provider = AnthropicProvider(base_url=server.url, api_key=KEY)
            try:
                return await provider.send("/v1/chat/completions", body())
            finally:
                await provider.aclose()

    reply = asyncio.run(main())
    assert reply.value.body["type"] == "message"
    assert reply.usage is not None and reply.usage.input_tokens > 0


def test_chat_to_messages_lifts_the_system_prompt() -> None:
    out = chat_to_messages(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
            ],
        }
    )
    assert out == {
        "model": "m",
        "system": "be brief",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1024,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Incorrect API key provided: {KEY}.", "Incorrect API key provided: ***."),
        (f"key {KEY[:12]}... rejected", "key ***... rejected"),
        ("nothing secret", "nothing secret"),
    ],
)
def test_scrub(text: str, expected: str) -> None:
    assert scrub(text, KEY) == expected
