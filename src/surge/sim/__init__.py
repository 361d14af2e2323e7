"""surge.sim: an OpenAI- and Anthropic-compatible server with latency, limits and faults.

Tests, benchmarks and ``surge demo`` stand on it, and users can try surge (or test
their own pipelines) without a key or a bill. Run it with ``surge sim`` (or
``python -m surge.sim``), in-process with ``async with serve(...) as server``, or in a
background thread with ``with serve_in_thread(...) as server``.

HTTP contract
-------------
Endpoints (with or without the ``/v1`` prefix; any other path gets 404 with a HINT,
so a wrong base URL shows up here as it would against the provider):
``POST /v1/chat/completions`` (``stream``, ``stream_options.include_usage``),
``POST /v1/embeddings`` (string, list of strings or token arrays; ``dimensions``;
``encoding_format`` float or base64), ``POST /v1/messages`` (Anthropic, ``stream``),
``GET /v1/models``, ``GET /sim/stats``, ``POST /sim/reset``.

Models: ``GET /v1/models`` lists ``SimConfig.models`` (``KNOWN_MODELS``: sim-small,
sim-large, sim-embed and popular OpenAI and Anthropic names). With
``any_model=False`` (the default of ``surge sim``; ``--any-model`` turns it off) a
request for another model gets 404 ``model_not_found`` in OpenAI's error shape, or
Anthropic's ``not_found_error`` on ``/v1/messages``; the library default accepts any.

Keys: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``; none is the key
``anonymous``. With ``api_keys`` set, any other key gets 401.

Connections: HTTP/1.1 keep-alive; an idle connection stays open 120 s, longer than
client pools keep one (httpx 5 s, aiohttp 15 s), so no reused connection meets a close
the simulator did not mean as a fault.

Limits (per key, see ``SimConfig``): a request costs 1 request and
``request_cost(body)`` tokens. Every OpenAI-endpoint answer that got as far as the
limiter carries ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``: limit per
minute, floor of the bucket level after this request, and time until the bucket is
full again in OpenAI's format (``20ms``, ``1.5s``, ``6m0s``; see ``format_duration``).
So burst = remaining + reset × limit / 60. ``/v1/messages`` carries
``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``
with RFC 3339 reset times. A refusal is 429 with ``retry-after`` (whole seconds,
rounded up), ``retry-after-ms`` (time until this request would fit) and
``{"error": {"type": "requests"|"tokens"|..., "code": "rate_limit_exceeded"}}``
(Anthropic: ``{"type": "error", "error": {"type": "rate_limit_error"}}``); it takes
nothing from the buckets. No limit configured, no headers.

Replies: ``expected_reply(body)`` (see ``surge.sim.replies``); usage counts
``count_tokens(body)`` in and one token per reply word out. A request containing the
poison marker (``SURGE_POISON``) anywhere in its body always gets 400. Sampling
options, ``n`` (always one choice), ``stop``, tools and images are accepted and ignored.

Faults and latency: drawn per request from (seed, content, attempt), see
``surge.sim.faults`` and ``plan(body)``. The request header ``x-sim-fault: KIND``
(one of ``FAULT_KINDS`` or ``none``) forces a fault for one request. Answers carry
``x-sim-content-key`` and ``x-sim-attempt``.

Stats (``GET /sim/stats`` = ``server.stats()``): ``requests``, ``by_status`` (status
codes as strings, plus ``reset``, ``malformed`` and ``hang`` for faults the client saw
no status for), ``by_key``, ``attempts`` (content key → arrivals), ``faults``,
``not_found`` ("METHOD path" → requests to a path no real API serves, answered 404 and
counted in ``requests`` too: a wrong base URL shows here), ``in_flight``, ``peak_concurrency``, ``tokens``, ``capacity`` and a per-second
``timeline`` (started, ok, rate_limited, errors, input and output tokens).

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
from surge.sim.config import (
    DEFAULT_MAX_TOKENS,
    KNOWN_MODELS,
    POISON,
    Faults,
    Latency,
    SimConfig,
)
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
    "KNOWN_MODELS",
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
