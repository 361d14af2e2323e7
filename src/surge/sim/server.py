"""The simulator's HTTP server: a raw ASGI app served by uvicorn (httptools, uvloop).

No web framework: routing is four suffix checks and responses are pre-shaped bytes,
so the server answers thousands of requests a second on one core and never becomes
the bottleneck of what it measures. Every delay is a timer on the event loop.

Order of checks for a generation request: JSON → content stats → API key (401) →
validation and poison marker (400) → rate limits (429, takes nothing) → admission
(takes from every bucket) → capacity slot → fault → latency → reply.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import math
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import uvicorn

from surge.sim._limits import Bucket, Limiter, format_duration, rfc3339
from surge.sim._stats import Stats
from surge.sim.config import SimConfig
from surge.sim.faults import FAULT_KINDS, INSTANT, Plan, plan_for_key
from surge.sim.profiles import resolve
from surge.sim.replies import (
    Reply,
    content_key,
    count_tokens,
    embedding_vector,
    max_tokens_of,
    reply_for_key,
)

__all__ = ["SimApp", "SimServer", "serve", "serve_in_thread"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_JSON = b"application/json"
_SSE = b"text/event-stream; charset=utf-8"
_ANONYMOUS = "anonymous"
_SLOW_PIECES = 8
_KEEP_ALIVE_SECONDS = 120

_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
}
_FAULT_MESSAGES = {
    500: "The server had an error while processing your request (simulated).",
    502: "Bad gateway (simulated).",
    503: "The engine is currently overloaded, please try again later (simulated).",
    504: "Gateway timeout: the request hung (simulated).",
}


def _header_names(kind: str) -> tuple[tuple[bytes, bytes, bytes], tuple[bytes, bytes, bytes]]:
    dashed = kind.replace("_", "-")
    openai = tuple(
        f"x-ratelimit-{part}-{dashed}".encode() for part in ("limit", "remaining", "reset")
    )
    anthropic = tuple(
        f"anthropic-ratelimit-{dashed}-{part}".encode() for part in ("limit", "remaining", "reset")
    )
    return openai, anthropic  # type: ignore[return-value]


_HEADER_NAMES = {
    kind: _header_names(kind) for kind in ("requests", "tokens", "input_tokens", "output_tokens")
}


def _wake(future: asyncio.Future[Any], value: Any = None) -> None:
    if not future.done():
        future.set_result(value)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(slots=True)
class _Call:
    """One admitted generation request, as the reply stage needs it."""

    body: dict[str, Any]
    kind: str
    ckey: str
    attempt: int
    plan: Plan
    fault: str | None
    headers: Headers
    tokens_in: int
    max_out: int

    @property
    def anthropic(self) -> bool:
        return self.kind == "messages"


class _Refused(Exception):
    """An error answer decided before admission (400, 401, 429...)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        etype: str | None = None,
        code: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.etype = etype
        self.code = code
        self.headers = headers or []


class SimApp:
    """The ASGI application; one instance holds the state of one simulated provider.

    Example:
        >>> app = SimApp(SimConfig(rpm=60))
        >>> app.stats()["requests"]
        0
    """

    def __init__(self, config: SimConfig, *, policy: Any = None) -> None:
        self.config = config
        # A surge.sim._policy.PolicyHost: a real model behind the TRL/SGLang endpoints.
        self.policy = policy
        self.limiter = Limiter(
            {
                "requests": config.rpm,
                "tokens": config.tpm,
                "input_tokens": config.itpm,
                "output_tokens": config.otpm,
            },
            config.burst_seconds,
        )
        self._stats = Stats(time.monotonic(), time.time())
        self.admitted: Counter[str] = Counter()
        self.closing = False
        self._sleepers: set[asyncio.Future[Any]] = set()
        self._slots = asyncio.Semaphore(config.capacity) if config.capacity else None
        self._waiting = 0
        self._generating = 0
        self._draws = not (config.latency.is_zero and not config.faults.any)
        self._poison = config.poison.encode() if config.poison else None
        self._models = _dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": m,
                        "object": "model",
                        "created": 0,
                        "owned_by": "surge-sim",
                        "type": "model",
                        "display_name": m,
                        "created_at": "1970-01-01T00:00:00Z",
                    }
                    for m in config.models
                ],
                "has_more": False,
                "first_id": config.models[0] if config.models else None,
                "last_id": config.models[-1] if config.models else None,
            }
        )

    # -- public helpers --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot of the counters (what ``GET /sim/stats`` returns)."""
        snapshot = self._stats.snapshot(time.monotonic())
        snapshot["capacity"] = {
            "slots": self.config.capacity,
            "generating": self._generating,
            "waiting": self._waiting,
        }
        return snapshot

    def reset(self) -> None:
        """Clear stats, buckets and attempt counters (what ``POST /sim/reset`` does)."""
        in_flight = self._stats.in_flight
        self._stats.reset(time.monotonic(), time.time())
        self._stats.in_flight = self._stats.peak_concurrency = in_flight
        self.limiter.clear()
        self.admitted.clear()

    def close(self) -> None:
        """Fast-forward every pending delay and end every hang: the server is stopping."""
        self.closing = True
        for future in list(self._sleepers):
            _wake(future)
        if self.policy is not None:
            self.policy.close()

    async def _sleep(self, delay: float) -> None:
        if delay <= 0 or self.closing:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        handle = loop.call_later(delay, _wake, future)
        self._sleepers.add(future)
        try:
            await future
        finally:
            self._sleepers.discard(future)
            handle.cancel()

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if self.policy is not None and self.policy.serves(method, path):
            await self._serve_policy(method, path, receive, send)
            return
        route = _route(path)
        if method == "POST":
            raw = await self._read_body(receive)
            if raw is None:
                return
            if route in ("/chat/completions", "/messages", "/embeddings"):
                kind = "chat" if route == "/chat/completions" else route[1:]
                await self._generate(scope, raw, receive, send, kind)
            elif route == "/sim/reset":
                self.reset()
                await _respond(send, 200, b'{"ok":true}')
            else:
                await self._unknown_path(scope, send, method, path)
        elif method == "GET":
            if route == "/models":
                await _respond(send, 200, self._models)
            elif route == "/sim/stats":
                await _respond(send, 200, _dumps(self.stats()))
            elif route in ("/", "/health", "/sim/health"):
                await _respond(send, 200, b'{"ok":true}')
            else:
                await self._unknown_path(scope, send, method, path)
        elif route in _ROUTES:
            await _respond(send, 405, _error(False, 405, f"Method {method} not allowed"))
        else:
            await self._unknown_path(scope, send, method, path)

    async def _unknown_path(self, scope: Scope, send: Send, method: str, path: str) -> None:
        """404, counted in the stats: a wrong base path shows there."""
        self._stats.unknown_path(method, path, time.monotonic())
        await _not_found(scope, send, method, path)

    async def _serve_policy(self, method: str, path: str, receive: Receive, send: Send) -> None:
        raw = await self._read_body(receive) if method == "POST" else b""
        if raw is None:
            return
        status, body = await self.policy.handle(method, path, raw)
        await _respond(send, status, _dumps(body))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    async def _read_body(receive: Receive) -> bytes | None:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body: bytes = message.get("body", b"")
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":
                return None
            body += message.get("body", b"")
        return body

    # -- generation endpoints --------------------------------------------------------

    async def _generate(
        self, scope: Scope, raw: bytes, receive: Receive, send: Send, kind: str
    ) -> None:
        key = _ANONYMOUS
        forced: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = value.decode("latin-1")
                key = token[7:].strip() if token[:7].lower() == "bearer " else token.strip()
            elif name == b"x-api-key":
                key = value.decode("latin-1").strip()
            elif name == b"x-sim-fault":
                forced = value.decode("latin-1").strip()
        key = key or _ANONYMOUS
        anthropic = kind == "messages"
        stats = self._stats
        stats.start(key, time.monotonic())
        label, tokens_in, tokens_out = "500", 0, 0
        try:
            label, tokens_in, tokens_out = await self._handle(raw, receive, send, kind, key, forced)
        except _Refused as refused:
            label = str(refused.status)
            await _respond(
                send,
                refused.status,
                _error(anthropic, refused.status, refused.message, refused.etype, refused.code),
                refused.headers,
            )
        finally:
            stats.finish(
                key, label, time.monotonic(), input_tokens=tokens_in, output_tokens=tokens_out
            )

    async def _handle(
        self, raw: bytes, receive: Receive, send: Send, kind: str, key: str, forced: str | None
    ) -> tuple[str, int, int]:
        cfg = self.config
        anthropic = kind == "messages"
        try:
            body = json.loads(raw)
        except ValueError:
            raise _Refused(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise _Refused(400, "The request body must be a JSON object.")
        ckey = content_key(body)
        self._stats.attempts[ckey] += 1

        if cfg.api_keys is not None and key not in cfg.api_keys:
            raise _Refused(401, "Incorrect API key provided (simulator).", code="invalid_api_key")
        if kind == "embeddings":
            if not isinstance(body.get("input"), (str, list)) or body.get("input") in ("", []):
                raise _Refused(
                    400, "'input' must be a non-empty string or list.", code="invalid_value"
                )
        elif not isinstance(body.get("messages"), list):
            raise _Refused(400, "'messages' must be a list.", code="invalid_value")
        if not cfg.knows_model(body.get("model")):
            raise _unknown_model(body.get("model"), anthropic)
        if self._poison is not None and self._poison in raw:
            raise _Refused(
                400,
                f"The request contains the poison marker {cfg.poison!r}; it always fails.",
                code="poisoned",
            )
        if forced is not None and forced not in FAULT_KINDS and forced != "none":
            raise _Refused(400, f"x-sim-fault must be one of {', '.join(FAULT_KINDS)} or none.")

        tokens_in = count_tokens(body)
        max_out = 0 if kind == "embeddings" else max_tokens_of(body, cfg.default_max_tokens)
        headers: Headers = []
        if self.limiter.active:
            costs = {
                "requests": 1,
                "tokens": tokens_in + max_out,
                "input_tokens": tokens_in,
                "output_tokens": max_out,
            }
            buckets, wait, blocked = self.limiter.admit(key, costs, time.monotonic())
            headers = _limit_headers(buckets, anthropic)
            if blocked is not None:
                bucket = buckets[blocked]
                headers.append((b"retry-after", str(max(1, math.ceil(wait))).encode()))
                headers.append((b"retry-after-ms", str(math.ceil(wait * 1000)).encode()))
                raise _Refused(
                    429,
                    f"Rate limit reached for {blocked} per min (simulator): Limit {bucket.limit}, "
                    f"Remaining {bucket.remaining}, Requested {costs[blocked]}. "
                    f"Please try again in {format_duration(wait)}.",
                    etype=blocked,
                    code="rate_limit_exceeded",
                    headers=headers,
                )

        if (
            self._slots is not None
            and cfg.capacity_queue is not None
            and (self._slots.locked() and self._waiting >= cfg.capacity_queue)
        ):
            raise _Refused(503, _FAULT_MESSAGES[503], headers=headers)
        attempt = self.admitted[ckey]
        self.admitted[ckey] = attempt + 1
        plan = plan_for_key(ckey, attempt, cfg) if self._draws else INSTANT
        fault = plan.fault if forced is None else (None if forced == "none" else forced)
        if fault is not None:
            self._stats.faults[fault] += 1
        headers.append((b"x-sim-content-key", ckey.encode()))
        headers.append((b"x-sim-attempt", str(attempt).encode()))

        call = _Call(body, kind, ckey, attempt, plan, fault, headers, tokens_in, max_out)
        if self._slots is None:
            return await self._reply(call, receive, send, 1.0)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._generating += 1
        try:
            # Batched decoding: every sequence in the batch slows the others down.
            slowdown = 1.0 + cfg.capacity_slowdown * (self._generating - 1) / (cfg.capacity or 1)
            return await self._reply(call, receive, send, slowdown)
        finally:
            self._generating -= 1
            self._slots.release()

    async def _reply(
        self, call: _Call, receive: Receive, send: Send, slowdown: float
    ) -> tuple[str, int, int]:
        body, fault, headers, tokens_in = call.body, call.fault, call.headers, call.tokens_in
        anthropic = call.anthropic
        plan = call.plan
        ttft = plan.ttft * slowdown
        per_token = plan.per_token * slowdown
        if fault in ("500", "502", "503"):
            status = int(fault)
            await self._sleep(ttft)
            await _respond(
                send, status, _error(anthropic, status, _FAULT_MESSAGES[status]), headers
            )
            return fault, 0, 0
        if fault == "hang":
            return await self._hang(receive, send, anthropic, headers), 0, 0

        model = str(body.get("model") or "sim")
        if call.kind == "embeddings":
            payload = _embeddings(body, model, self.config.embedding_dim, tokens_in)
            await self._sleep(ttft)
            return await self._deliver(send, payload, headers, fault), tokens_in, 0

        reply = reply_for_key(call.ckey, call.max_out, self.config.reply_tokens)
        tokens_out = reply.output_tokens
        if body.get("stream"):
            parts = (_anthropic_stream if anthropic else _openai_stream)(
                body, model, call.ckey, call.attempt, reply, tokens_in
            )
            label = await self._stream(send, parts, headers, fault, ttft, per_token)
            return label, tokens_in, tokens_out
        make = _anthropic_message if anthropic else _openai_completion
        payload = make(model, call.ckey, call.attempt, reply, tokens_in)
        await self._sleep(ttft + per_token * tokens_out)
        return await self._deliver(send, payload, headers, fault), tokens_in, tokens_out

    async def _deliver(
        self, send: Send, payload: bytes, headers: Headers, fault: str | None
    ) -> str:
        if fault == "malformed":
            await _respond(send, 200, payload[: max(1, len(payload) // 2)], headers)
            return "malformed"
        if fault not in ("reset", "slow"):
            await _respond(send, 200, payload, headers)
            return "200"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", _JSON),
                    (b"content-length", str(len(payload)).encode()),
                    *headers,
                ],
            }
        )
        if fault == "reset":
            await send(
                {
                    "type": "http.response.body",
                    "body": payload[: len(payload) // 2],
                    "more_body": True,
                }
            )
            await self._reset(send)
            return "reset"
        step = math.ceil(len(payload) / _SLOW_PIECES)
        for start in range(0, len(payload), step):
            await self._sleep(self.config.faults.slow_seconds / _SLOW_PIECES)
            await send(
                {
                    "type": "http.response.body",
                    "body": payload[start : start + step],
                    "more_body": start + step < len(payload),
                }
            )
        return "200"

    async def _stream(
        self,
        send: Send,
        parts: list[bytes],
        headers: Headers,
        fault: str | None,
        ttft: float,
        per_token: float,
    ) -> str:
        if fault == "slow":
            per_token = max(per_token, self.config.faults.slow_seconds / len(parts))
        if fault == "malformed":
            parts[len(parts) // 2] = b'data: {"id":"broken","choices":[{"delta":{"content":"tr\n\n'
        cut = max(1, len(parts) // 2) if fault == "reset" else len(parts)
        await self._sleep(ttft)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", _SSE), (b"cache-control", b"no-cache"), *headers],
            }
        )
        if per_token <= 0 or self.closing:
            await send(
                {
                    "type": "http.response.body",
                    "body": b"".join(parts[:cut]),
                    "more_body": cut < len(parts),
                }
            )
        else:
            for i in range(cut):
                if i:
                    await self._sleep(per_token)
                await send(
                    {
                        "type": "http.response.body",
                        "body": parts[i],
                        "more_body": i + 1 < len(parts),
                    }
                )
        if cut < len(parts):
            await self._reset(send)
            return "reset"
        return "malformed" if fault == "malformed" else "200"

    async def _reset(self, send: Send) -> None:
        """Reset the TCP connection in the middle of a response.

        ASGI has no message for this, so reach the transport through uvicorn's
        response cycle (``send`` is its bound method); elsewhere, returning without
        completing the response makes the server close the connection instead.
        """
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is None:
            return
        await self._sleep(0.002)  # let the partial body reach the client first
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(Exception):
            # Linger 0 turns close into an RST, which is what a dropped connection looks like.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # Let the protocol see connection_lost before the app returns, so the server
        # knows the client is gone and does not log an incomplete response.
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def _hang(self, receive: Receive, send: Send, anthropic: bool, headers: Headers) -> str:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        seconds = self.config.faults.hang_seconds
        timer = loop.call_later(seconds, _wake, waiter) if seconds is not None else None
        if self.closing:
            _wake(waiter)
        self._sleepers.add(waiter)

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    _wake(waiter, "disconnect")
                    return

        watcher = loop.create_task(watch())
        try:
            await waiter
        finally:
            self._sleepers.discard(waiter)
            if timer is not None:
                timer.cancel()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if waiter.result() == "disconnect":
            return "hang"
        status = 503 if self.closing else 504
        await _respond(send, status, _error(anthropic, status, _FAULT_MESSAGES[status]), headers)
        return "hang" if self.closing else "504"


# -- routes ------------------------------------------------------------------------------

# The real APIs' paths under their base URLs: OpenAI's SDK posts to {base_url}/chat/...
# with base_url ending in /v1, Anthropic's to {base_url}/v1/messages. Only these answer,
# so a wrong base path gets 404 here as it would from the provider.
_ROUTES = frozenset(
    {"/chat/completions", "/messages", "/embeddings", "/models", "/sim/reset", "/sim/stats"}
)
_UNVERSIONED = frozenset({"/", "/health", "/sim/health", "/sim/reset", "/sim/stats"})


def _route(path: str) -> str | None:
    """The endpoint a path names (``/v1/chat/completions`` → ``/chat/completions``), or
    None for a path no real API serves.

    Example:
        >>> _route("/v1/chat/completions"), _route("/chat/completions"), _route("/v2/chat/completions")
        ('/chat/completions', '/chat/completions', None)
    """
    if path in _UNVERSIONED:
        return path
    bare = path.removeprefix("/v1")
    return bare if bare in _ROUTES else None


async def _not_found(scope: Scope, send: Send, method: str, path: str) -> None:
    """404 in the caller's API's shape (Anthropic's when it sent ``anthropic-version``)."""
    anthropic = any(name == b"anthropic-version" for name, _ in scope["headers"])
    message = (
        f"Invalid URL ({method} {path}). HINT: the simulator serves /v1/chat/completions, "
        "/v1/embeddings, /v1/messages and /v1/models (also without /v1): check the base "
        "URL (surge run and the OpenAI SDK: http://HOST:PORT/v1; the Anthropic SDK: "
        "http://HOST:PORT)."
    )
    await _respond(send, 404, _error(anthropic, 404, message))


# -- response bodies ---------------------------------------------------------------------


def _unknown_model(model: Any, anthropic: bool) -> _Refused:
    """What OpenAI and Anthropic answer for a model they do not serve (or none)."""
    if model is None or model == "":
        return _Refused(
            400, "you must provide a model parameter", code="missing_required_parameter"
        )
    if anthropic:
        return _Refused(404, f"model: {model}")
    return _Refused(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


async def _respond(send: Send, status: int, body: bytes, headers: Headers | None = None) -> None:
    start_headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
    if headers:
        start_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})


def _error(
    anthropic: bool, status: int, message: str, etype: str | None = None, code: str | None = None
) -> bytes:
    if anthropic:
        kind = (
            "rate_limit_error" if status == 429 else _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        )
        return _dumps({"type": "error", "error": {"type": kind, "message": message}})
    kind = etype or _OPENAI_ERROR_TYPES.get(status, "server_error")
    return _dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def _limit_headers(buckets: dict[str, Bucket], anthropic: bool) -> Headers:
    headers: Headers = []
    wall = time.time()
    for kind, bucket in buckets.items():
        openai_names, anthropic_names = _HEADER_NAMES[kind]
        if anthropic:
            limit, remaining, reset = anthropic_names
            reset_value = rfc3339(wall + bucket.reset_in)
        elif kind in ("requests", "tokens"):
            limit, remaining, reset = openai_names
            reset_value = format_duration(bucket.reset_in)
        else:
            continue
        headers.append((limit, str(bucket.limit).encode()))
        headers.append((remaining, str(bucket.remaining).encode()))
        headers.append((reset, reset_value.encode()))
    return headers


def _openai_completion(model: str, ckey: str, attempt: int, reply: Reply, tokens_in: int) -> bytes:
    return _dumps(
        {
            "id": f"chatcmpl-{ckey}-{attempt}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "surge-sim",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": tokens_in,
                "completion_tokens": reply.output_tokens,
                "total_tokens": tokens_in + reply.output_tokens,
            },
        }
    )


def _anthropic_message(model: str, ckey: str, attempt: int, reply: Reply, tokens_in: int) -> bytes:
    return _dumps(
        {
            "id": f"msg_{ckey}_{attempt}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": reply.text}],
            "stop_reason": reply.anthropic_stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": tokens_in, "output_tokens": reply.output_tokens},
        }
    )


def _stream_tokens(reply: Reply) -> list[str]:
    return [w if i == 0 else " " + w for i, w in enumerate(reply.words)]


def _openai_stream(
    body: dict[str, Any], model: str, ckey: str, attempt: int, reply: Reply, tokens_in: int
) -> list[bytes]:
    """SSE events, one list item per output token (head and tail folded into the ends)."""
    options = body.get("stream_options")
    with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    base = _dumps(
        {
            "id": f"chatcmpl-{ckey}-{attempt}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "surge-sim",
        }
    )[:-1].decode()
    tail = ',"usage":null}' if with_usage else "}"

    def chunk(delta: str, finish: str | None) -> str:
        fin = "null" if finish is None else f'"{finish}"'
        choice = f'{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{fin}}}'
        return f'data: {base},"choices":[{choice}]{tail}\n\n'

    head = chunk('{"role":"assistant","content":""}', None)
    parts = [chunk(f'{{"content":{json.dumps(t)}}}', None) for t in _stream_tokens(reply)]
    end = chunk("{}", reply.finish_reason)
    if with_usage:
        usage = _dumps(
            {
                "prompt_tokens": tokens_in,
                "completion_tokens": reply.output_tokens,
                "total_tokens": tokens_in + reply.output_tokens,
            }
        ).decode()
        end += f'data: {base},"choices":[],"usage":{usage}}}\n\n'
    end += "data: [DONE]\n\n"
    if not parts:
        return [(head + end).encode()]
    parts[0] = head + parts[0]
    parts[-1] += end
    return [p.encode() for p in parts]


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _anthropic_stream(
    body: dict[str, Any], model: str, ckey: str, attempt: int, reply: Reply, tokens_in: int
) -> list[bytes]:
    message: dict[str, Any] = {
        "id": f"msg_{ckey}_{attempt}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": tokens_in, "output_tokens": 0},
    }
    head = (
        _sse("message_start", {"type": "message_start", "message": message})
        + _sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        + _sse("ping", {"type": "ping"})
    )
    parts = [
        _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
        )
        for t in _stream_tokens(reply)
    ]
    end = (
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        + _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.anthropic_stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": reply.output_tokens},
            },
        )
        + _sse("message_stop", {"type": "message_stop"})
    )
    if not parts:
        return [(head + end).encode()]
    parts[0] = head + parts[0]
    parts[-1] += end
    return [p.encode() for p in parts]


def _embeddings(body: dict[str, Any], model: str, default_dim: int, tokens_in: int) -> bytes:
    inputs = body["input"]
    if isinstance(inputs, str) or (inputs and all(isinstance(x, int) for x in inputs)):
        inputs = [inputs]
    dim = body.get("dimensions")
    if not isinstance(dim, int) or dim < 1:
        dim = default_dim
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(inputs):
        text = item if isinstance(item, str) else json.dumps(item)
        vector = embedding_vector(text, dim)
        encoded: Any = (
            base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode() if as_base64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return _dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens_in, "total_tokens": tokens_in},
        }
    )


# -- running it --------------------------------------------------------------------------


class SimServer:
    """A running simulator: where it listens and what it has seen.

    ``url`` ends in ``/v1`` (the OpenAI SDK's ``base_url``); ``base_url`` is the bare
    origin (the Anthropic SDK's ``base_url``, which appends ``/v1/messages``).
    """

    def __init__(self, app: SimApp, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.base_url = f"http://{host}:{port}"
        self.url = f"{self.base_url}/v1"
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    @property
    def config(self) -> SimConfig:
        return self.app.config

    def _in_loop(self, fn: Callable[[], Any]) -> Any:
        # The app's state belongs to its loop's thread; after the server stopped it is
        # frozen and can be read from anywhere.
        if threading.get_ident() == self._thread or self._loop.is_closed():
            return fn()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # pragma: no cover - fn is a plain read
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(call)
        return future.result(timeout=10)

    def stats(self) -> dict[str, Any]:
        """Same data as ``GET /sim/stats``; safe to call from any thread.

        Example:
            >>> async def main():
            ...     async with serve(profile="fast") as server:
            ...         return server.stats()["requests"]
            >>> asyncio.run(main())
            0
        """
        return dict(self._in_loop(self.app.stats))

    def reset(self) -> None:
        """Clear stats, buckets and attempt counters; safe to call from any thread."""
        self._in_loop(self.app.reset)


@contextlib.asynccontextmanager
async def serve(
    config: SimConfig | None = None,
    /,
    *,
    profile: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    policy: Any = None,
    **changes: Any,
) -> AsyncIterator[SimServer]:
    """Run a simulator on the current event loop for the duration of the block.

    Start from ``config``, or the named ``profile`` (see ``PROFILES``), or the default
    (no limits, no latency), with ``changes`` applied (``SimConfig.replace``). Port 0
    picks a free port. On exit pending delays are fast-forwarded and hangs answered,
    so it shuts down at once.

    ``policy`` (a torch model, or a ``surge.sim._policy.PolicyHost``) serves that model
    behind the TRL ``vllm-serve`` and SGLang endpoints surge.rl speaks (see
    ``surge.sim._policy``).

    Example:
        >>> import httpx
        >>> async def main():
        ...     async with serve(profile="fast", rpm=600) as server:
        ...         async with httpx.AsyncClient(base_url=server.url) as http:
        ...             r = await http.post("/chat/completions", json={"messages": []})
        ...             return r.status_code, r.headers["x-ratelimit-limit-requests"]
        >>> asyncio.run(main())
        (200, '600')
    """
    cfg = resolve(config, profile, changes)
    if policy is not None and not hasattr(policy, "serves"):
        from surge.sim._policy import PolicyHost

        policy = PolicyHost(policy)
    app = SimApp(cfg, policy=policy)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    uv_config = uvicorn.Config(
        app,
        interface="asgi3",
        lifespan="off",
        http="httptools",
        ws="none",
        log_config=None,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        backlog=4096,
        # uvicorn closes an idle connection after 5 s, sooner than client pools let one
        # go (httpx: 5 s, aiohttp: 15 s): a pooled connection reused as the server
        # closes it fails as a reset (LiteLLM then reports InternalServerError), a
        # fault no provider injected. Idle connections outlive any client pool here.
        timeout_keep_alive=_KEEP_ALIVE_SECONDS,
    )
    uv_config.load()
    server = uvicorn.Server(uv_config)
    # Server.startup needs the lifespan that Server.serve would have made; driving
    # startup ourselves skips serve's signal handlers and its 0.1 s shutdown polls.
    server.lifespan = uv_config.lifespan_class(uv_config)
    await server.startup(sockets=[sock])
    try:
        yield SimServer(app, host, sock.getsockname()[1])
    finally:
        await _shutdown(server, app)


async def _shutdown(server: uvicorn.Server, app: SimApp) -> None:
    app.close()
    for listener in server.servers:
        listener.close()
    for connection in list(server.server_state.connections):
        connection.shutdown()
    tasks = set(server.server_state.tasks)
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=5.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for connection in list(server.server_state.connections):
        connection.shutdown()
    for listener in server.servers:
        await listener.wait_closed()
    await asyncio.sleep(0)  # let transports finish closing


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where installed (faster), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


@contextlib.contextmanager
def serve_in_thread(
    config: SimConfig | None = None,
    /,
    *,
    profile: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    policy: Any = None,
    **changes: Any,
) -> Iterator[SimServer]:
    """Like ``serve`` but on its own event loop in a background thread, for sync code.

    Example:
        >>> import httpx
        >>> with serve_in_thread(profile="fast") as server:
        ...     httpx.get(server.url + "/models").status_code
        200
    """
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        try:
            async with serve(
                config, profile=profile, host=host, port=port, policy=policy, **changes
            ) as server:
                stop = asyncio.Event()
                box["server"], box["stop"] = server, stop
                ready.set()
                await stop.wait()
        except BaseException as exc:
            box["error"] = exc
            ready.set()

    def run() -> None:
        loop = new_event_loop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="surge-sim", daemon=True)
    thread.start()
    ready.wait()
    if "error" in box:
        thread.join()
        raise box["error"]
    server: SimServer = box["server"]
    try:
        yield server
    finally:
        server._loop.call_soon_threadsafe(box["stop"].set)
        thread.join()
