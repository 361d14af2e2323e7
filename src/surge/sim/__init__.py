"""surge.sim: an OpenAI- and Anthropic-compatible server with latency, limits and faults.

Tests, benchmarks and ``surge demo`` stand on it, and users can try surge (or test
their own pipelines) without a key or a bill.

Example:
    >>> import asyncio, openai, surge.sim
    >>> async def main():
    ...     async with surge.sim.serve(profile="fast", rpm=600) as server:
    ...         client = openai.AsyncOpenAI(base_url=server.url, api_key="k", max_retries=0)
    ...         body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    ...         async with client:
    ...             r = await client.chat.completions.create(**body)
    ...         return r.choices[0].message.content == surge.sim.expected_reply(body).text
    >>> asyncio.run(main())
    True
"""

from surge.sim._limits import format_duration, parse_duration
from surge.sim.config import DEFAULT_MAX_TOKENS, POISON, Faults, Latency, SimConfig
from surge.sim.faults import FAULT_KINDS, Plan, plan
from surge.sim.profiles import PROFILES
from surge.sim.replies import (
    Reply,
    content_key,
    count_tokens,
    embedding_vector,
    expected_reply,
    max_tokens_of,
    request_cost,
)
from surge.sim.server import SimApp, SimServer, serve, serve_in_thread

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "FAULT_KINDS",
    "POISON",
    "PROFILES",
    "Faults",
    "Latency",
    "Plan",
    "Reply",
    "SimApp",
    "SimConfig",
    "SimServer",
    "content_key",
    "count_tokens",
    "embedding_vector",
    "expected_reply",
    "format_duration",
    "max_tokens_of",
    "parse_duration",
    "plan",
    "request_cost",
    "serve",
    "serve_in_thread",
]
