"""The simulator observed through a plain HTTP client."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from typing import Any

import httpx
import pytest

from surge.sim import (
    Faults,
    Latency,
    SimConfig,
    content_key,
    count_tokens,
    embedding_vector,
    expected_reply,
    parse_duration,
    plan,
    serve,
)


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def client(url: str, key: str | None = "k", **kwargs: Any) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=url, headers=headers, **kwargs)


async def test_chat_reply_is_the_documented_function_of_the_request() -> None:
    async with serve() as server, client(server.url) as http:
        for i in range(20):
            body = chat(f"prompt {i}", max_tokens=i)
            data = (await http.post("/chat/completions", json=body)).json()
            want = expected_reply(body)
            assert data["choices"][0]["message"]["content"] == want.text
            assert data["choices"][0]["finish_reason"] == want.finish_reason
            assert data["usage"] == {
                "prompt_tokens": count_tokens(body),
                "completion_tokens": want.output_tokens,
                "total_tokens": count_tokens(body) + want.output_tokens,
            }
            assert data["model"] == "m"


async def test_headers_on_success_describe_the_buckets() -> None:
    async with serve(rpm=600, tpm=60_000, burst_seconds=2) as server, client(server.url) as http:
        body = chat("abcdefgh", max_tokens=98)  # costs 100 tokens
        r = await http.post("/chat/completions", json=body)
        h = r.headers
        assert r.status_code == 200
        assert h["x-ratelimit-limit-requests"] == "600"
        assert h["x-ratelimit-limit-tokens"] == "60000"
        assert h["x-ratelimit-remaining-requests"] == "19"  # burst 2 s × 10/s, one used
        assert 1899 <= int(h["x-ratelimit-remaining-tokens"]) <= 1900
        assert 0.09 <= parse_duration(h["x-ratelimit-reset-requests"]) <= 0.1
        assert 0.09 <= parse_duration(h["x-ratelimit-reset-tokens"]) <= 0.1
        # A client can infer the burst: remaining + reset × limit/60.
        burst = (
            int(h["x-ratelimit-remaining-tokens"])
            + parse_duration(h["x-ratelimit-reset-tokens"]) * 60_000 / 60
        )
        assert abs(burst - 2000) <= 2


async def test_an_idle_connection_outlives_client_pools() -> None:
    # uvicorn's default closed it after 5 s, while clients keep pooled connections 5-15 s:
    # one reused as the server closed it failed as a reset no provider sent. Real time,
    # one wait of 6 s: a server-side socket timer has no fake clock.
    async with serve() as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        body = json.dumps(chat("hi")).encode()
        request = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: {server.host}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode() + body
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        with pytest.raises(asyncio.TimeoutError):  # nothing comes: no close, no EOF
            await asyncio.wait_for(reader.read(1), timeout=6.0)
        writer.write(request)  # and the same connection still serves
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_429s_under_load_with_retry_after_and_nothing_consumed() -> None:
    async with serve(rpm=600, burst_seconds=1) as server, client(server.url) as http:
        results = await asyncio.gather(
            *(http.post("/chat/completions", json=chat(str(i))) for i in range(40))
        )
        ok = [r for r in results if r.status_code == 200]
        limited = [r for r in results if r.status_code == 429]
        assert 10 <= len(ok) <= 14 and len(ok) + len(limited) == 40  # 10 + refill meanwhile
        for r in limited:
            error = r.json()["error"]
            assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
            assert r.headers["retry-after"] == "1"
            assert 0 < int(r.headers["retry-after-ms"]) <= 100
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
        stats = server.stats()
        assert stats["by_status"] == {"200": len(ok), "429": len(limited)}
        assert stats["timeline"][0]["rate_limited"] == len(limited)


async def test_waiting_retry_after_ms_is_enough() -> None:
    async with serve(rpm=600, burst_seconds=0.1) as server, client(server.url) as http:
        assert (await http.post("/chat/completions", json=chat("a"))).status_code == 200
        refused = await http.post("/chat/completions", json=chat("b"))
        assert refused.status_code == 429
        await asyncio.sleep(int(refused.headers["retry-after-ms"]) / 1000)
        assert (await http.post("/chat/completions", json=chat("b"))).status_code == 200


async def test_tokens_limit_counts_input_plus_max_tokens_per_key() -> None:
    async with serve(tpm=6000, burst_seconds=1) as server:  # 100 tokens per key
        async with client(server.url, "a") as a, client(server.url, "b") as b:
            body = chat("abcd", max_tokens=59)  # 60 tokens
            assert (await a.post("/chat/completions", json=body)).status_code == 200
            r = await a.post("/chat/completions", json=body)
            assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"
            assert 100 <= int(r.headers["retry-after-ms"]) <= 200  # 20 missing at 100/s
            assert (await b.post("/chat/completions", json=body)).status_code == 200
        assert set(server.stats()["by_key"]) == {"a", "b"}


async def test_anthropic_messages_and_its_headers() -> None:
    cfg = SimConfig(rpm=60, itpm=6000, otpm=600, burst_seconds=1)
    async with serve(cfg) as server, client(server.base_url, key=None) as http:
        body = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hey"}]}
        r = await http.post("/v1/messages", json=body, headers={"x-api-key": "ak"})
        assert r.status_code == 200
        data = r.json()
        assert data["type"] == "message" and data["stop_reason"] == "max_tokens"
        assert data["content"][0]["text"] == expected_reply(body).text
        assert data["usage"] == {"input_tokens": 1, "output_tokens": 5}
        h = r.headers
        assert h["anthropic-ratelimit-requests-limit"] == "60"
        assert h["anthropic-ratelimit-requests-remaining"] == "0"
        assert h["anthropic-ratelimit-input-tokens-remaining"] == "99"
        assert h["anthropic-ratelimit-output-tokens-remaining"] == "5"
        assert h["anthropic-ratelimit-requests-reset"].endswith("Z")
        assert "x-ratelimit-limit-requests" not in h
        r = await http.post("/v1/messages", json=body, headers={"x-api-key": "ak"})
        assert r.status_code == 429 and "retry-after" in r.headers
        assert r.json() == {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": r.json()["error"]["message"]},
        }


async def test_poison_is_always_400_and_never_admitted() -> None:
    async with serve(rpm=6000) as server, client(server.url) as http:
        for _ in range(3):
            r = await http.post("/chat/completions", json=chat("x SURGE_POISON y"))
            assert r.status_code == 400
            assert r.json()["error"]["type"] == "invalid_request_error"
            assert r.headers.get("x-ratelimit-remaining-requests") is None
        assert server.stats()["attempts"] == {content_key(chat("x SURGE_POISON y")): 3}
        r = await http.post("/messages", json=chat("SURGE_POISON"))
        assert r.json()["error"]["type"] == "invalid_request_error"


async def test_required_api_key_gives_401_otherwise() -> None:
    async with (
        serve(api_keys=frozenset({"good"})) as server,
        client(server.url, "bad") as bad,
        client(server.url, "good") as good,
    ):
        r = await bad.post("/chat/completions", json=chat("x"))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = await bad.post("/messages", json=chat("x"))
        assert r.json()["error"]["type"] == "authentication_error"
        assert (await good.post("/chat/completions", json=chat("x"))).status_code == 200


async def test_bad_requests_and_unknown_routes() -> None:
    async with serve() as server, client(server.url) as http:
        assert (await http.post("/chat/completions", content=b"{nope")).status_code == 400
        assert (await http.post("/chat/completions", json=[1])).status_code == 400
        assert (await http.post("/chat/completions", json={"messages": "x"})).status_code == 400
        assert (await http.post("/embeddings", json={"input": []})).status_code == 400
        assert (await http.post("/nowhere", json={})).status_code == 404
        assert (await http.get("/nowhere")).status_code == 404
        assert (await http.delete("/models")).status_code == 405
        r = await http.post("/chat/completions", json=chat("x"), headers={"x-sim-fault": "?"})
        assert r.status_code == 400
        models = (await http.get("/models")).json()
        assert [m["id"] for m in models["data"]] == list(server.config.models)


async def test_unknown_models_get_the_providers_404_when_asked_to_refuse_them() -> None:
    async with serve(any_model=False, rpm=600) as server, client(server.url) as http:
        ok = await http.post("/chat/completions", json=chat("x", model="gpt-4o-mini"))
        assert ok.status_code == 200
        dated = chat("x", model="gpt-4o-mini-2024-07-18")
        assert (await http.post("/chat/completions", json=dated)).status_code == 200
        r = await http.post("/chat/completions", json=chat("x", model="gpt-4o-mnii"))
        assert r.status_code == 404
        assert r.json() == {
            "error": {
                "message": "The model `gpt-4o-mnii` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        }
        assert "x-ratelimit-remaining-requests" not in r.headers  # refused before the limiter
        r = await http.post("/embeddings", json={"model": "nope", "input": "x"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = await http.post("/messages", json=chat("x", model="claude-sonnet-4-6", max_tokens=5))
        assert r.status_code == 404
        assert r.json()["error"] == {
            "type": "not_found_error",
            "message": "model: claude-sonnet-4-6",
        }
        missing = {"messages": [{"role": "user", "content": "x"}]}
        r = await http.post("/chat/completions", json=missing)
        assert r.status_code == 400 and r.json()["error"]["code"] == "missing_required_parameter"
        assert server.stats()["by_status"] == {"200": 2, "404": 3, "400": 1}
    async with serve() as server, client(server.url) as http:  # the library default: any name
        assert (await http.post("/chat/completions", json=chat("x"))).status_code == 200
        assert SimConfig().knows_model("anything") and not SimConfig(any_model=False).knows_model(
            "anything"
        )


async def test_only_the_real_apis_paths_are_served() -> None:
    async with serve() as server, httpx.AsyncClient(base_url=server.base_url) as http:
        for path in ("/v1/chat/completions", "/chat/completions"):
            assert (await http.post(path, json=chat("x"))).status_code == 200
        for path in (
            "/v2/chat/completions",
            "/openai/v1/chat/completions",
            "/v1/v1/chat/completions",
        ):
            r = await http.post(path, json=chat("x"))
            assert r.status_code == 404, path
            assert r.json()["error"]["message"].startswith(f"Invalid URL (POST {path}). HINT:")
        r = await http.post(
            "/v1/message", json=chat("x"), headers={"anthropic-version": "2023-06-01"}
        )
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
        assert (await http.get("/v2/models")).status_code == 404
        assert (await http.delete("/v2/models")).status_code == 404
        stats = (await http.get("/sim/stats")).json()  # the stats do not count themselves
    # A wrong base path shows in the stats: counted with the rest, and by path.
    assert stats["requests"] == 8
    assert stats["by_status"] == {"200": 2, "404": 6}
    assert stats["not_found"] == {
        "POST /v2/chat/completions": 1,
        "POST /openai/v1/chat/completions": 1,
        "POST /v1/v1/chat/completions": 1,
        "POST /v1/message": 1,
        "GET /v2/models": 1,
        "DELETE /v2/models": 1,
    }
    assert sum(second["started"] for second in stats["timeline"]) == 8
    assert sum(second["errors"] for second in stats["timeline"]) == 6
    assert stats["in_flight"] == 0


async def test_unknown_paths_past_the_hundredth_are_counted_together() -> None:
    async with serve() as server, httpx.AsyncClient(base_url=server.base_url) as http:
        for i in range(105):
            assert (await http.post(f"/v{i + 2}/chat/completions", json={})).status_code == 404
        await http.post("/v2/chat/completions", json={})  # a path already named
        stats = server.stats()
        assert stats["requests"] == stats["by_status"]["404"] == 106
        assert len(stats["not_found"]) == 101 and stats["not_found"]["other"] == 5
        assert stats["not_found"]["POST /v2/chat/completions"] == 2
        assert (await http.post("/sim/reset")).status_code == 200
        assert server.stats()["not_found"] == {} and server.stats()["requests"] == 0


async def test_embeddings_floats_and_base64() -> None:
    async with serve(embedding_dim=8) as server, client(server.url) as http:
        r = await http.post("/embeddings", json={"model": "e", "input": ["a", "bb"]})
        data = r.json()
        assert [d["embedding"] for d in data["data"]] == [
            embedding_vector("a", 8), embedding_vector("bb", 8),
        ]  # fmt: skip
        assert data["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
        r = await http.post(
            "/embeddings", json={"input": "a", "dimensions": 4, "encoding_format": "base64"}
        )
        raw = base64.b64decode(r.json()["data"][0]["embedding"])
        assert struct.unpack("<4f", raw) == pytest.approx(embedding_vector("a", 4), rel=1e-6)


def sse_events(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


async def test_openai_streaming_with_usage() -> None:
    async with serve() as server, client(server.url) as http:
        body = chat("stream me", max_tokens=7, stream=True, stream_options={"include_usage": True})
        r = await http.post("/chat/completions", json=body)
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == expected_reply(body).text
        assert chunks[-2]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["usage"]["completion_tokens"] == 7


async def test_streams_pace_tokens_by_latency() -> None:
    cfg = SimConfig(latency=Latency(ttft=0.15, per_token=0.02), reply_tokens=(10, 10))
    async with serve(cfg) as server, client(server.url) as http:
        start = time.perf_counter()
        arrivals = []
        body = chat("pace", stream=True)
        async with http.stream("POST", "/chat/completions", json=body) as r:
            async for _ in r.aiter_raw():
                arrivals.append(time.perf_counter() - start)
        assert 0.14 <= arrivals[0] < 0.5
        assert 0.14 + 9 * 0.02 - 0.01 <= arrivals[-1] < 1.0
        assert len(arrivals) >= 5  # tokens arrive over time, not in one piece


async def test_non_streamed_latency_is_ttft_plus_per_token_time() -> None:
    cfg = SimConfig(latency=Latency(ttft=0.1, per_token=0.01), reply_tokens=(10, 10))
    async with serve(cfg) as server, client(server.url) as http:
        start = time.perf_counter()
        await asyncio.gather(
            *(http.post("/chat/completions", json=chat(str(i))) for i in range(20))
        )
        elapsed = time.perf_counter() - start
        assert 0.2 - 0.01 <= elapsed < 1.0  # 20 calls overlap: about one call's latency
        assert server.stats()["peak_concurrency"] >= 10


async def test_stats_and_reset() -> None:
    async with serve(rpm=60_000, latency=Latency(ttft=0.01)) as server, client(server.url) as http:
        for _ in range(3):
            await http.post("/chat/completions", json=chat("same"))
        await http.post("/embeddings", json={"input": "e"})
        over_http = (await http.get("/sim/stats")).json()
        stats = server.stats()
        for name in ("requests", "by_status", "by_key", "attempts", "peak_concurrency", "tokens"):
            assert over_http[name] == stats[name]
        assert stats["requests"] == 4 and stats["in_flight"] == 0
        assert stats["attempts"][content_key(chat("same"))] == 3
        assert stats["by_key"]["k"]["by_status"] == {"200": 4}
        row = stats["timeline"][0]
        assert row["started"] == row["ok"] == 4
        assert stats["tokens"]["output"] == 3 * expected_reply(chat("same")).output_tokens
        assert (await http.post("/sim/reset")).json() == {"ok": True}
        assert server.stats()["requests"] == 0 and server.stats()["attempts"] == {}
        server.reset()
        assert server.stats()["by_status"] == {}


async def test_faults_5xx_with_provider_error_bodies() -> None:
    async with serve() as server, client(server.url) as http:
        for code in ("500", "502", "503"):
            r = await http.post("/chat/completions", json=chat(code), headers={"x-sim-fault": code})
            assert r.status_code == int(code) and r.json()["error"]["type"] == "server_error"
            r = await http.post("/messages", json=chat(code), headers={"x-sim-fault": code})
            assert r.json()["type"] == "error"
        assert server.stats()["faults"] == {"500": 2, "502": 2, "503": 2}


async def test_fault_hang_until_the_client_gives_up() -> None:
    async with serve(faults=Faults(hang=1.0)) as server, client(server.url) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/chat/completions", json=chat("h"), timeout=0.2)
        for _ in range(100):
            if server.stats()["in_flight"] == 0:
                break
            await asyncio.sleep(0.01)
        assert server.stats()["by_status"] == {"hang": 1}


async def test_fault_hang_with_a_time_limit_gives_504() -> None:
    async with (
        serve(faults=Faults(hang=1.0, hang_seconds=0.05)) as server,
        client(server.url) as http,
    ):
        assert (await http.post("/chat/completions", json=chat("h"))).status_code == 504


async def test_hung_requests_do_not_block_shutdown() -> None:
    start = time.perf_counter()
    async with httpx.AsyncClient() as http:
        async with serve(faults=Faults(hang=1.0)) as server:
            url = server.url + "/chat/completions"
            pending = asyncio.ensure_future(http.post(url, json=chat("h")))
            await asyncio.sleep(0.05)
            assert server.stats()["in_flight"] == 1
            # The block ends with the request still hanging: it is answered on the way out.
        assert (await pending).status_code == 503
    assert time.perf_counter() - start < 2.0


async def test_fault_reset_mid_response() -> None:
    async with serve(faults=Faults(reset=1.0)) as server, client(server.url) as http:
        with pytest.raises(httpx.TransportError):
            await http.post("/chat/completions", json=chat("r"))
        with pytest.raises(httpx.TransportError):
            await http.post("/chat/completions", json=chat("r", stream=True))
        assert server.stats()["by_status"] == {"reset": 2}
        # The server keeps serving other connections.
        ok = await http.post("/chat/completions", json=chat("r"), headers={"x-sim-fault": "none"})
        assert ok.status_code == 200


async def test_fault_malformed_body() -> None:
    async with serve(faults=Faults(malformed=1.0)) as server, client(server.url) as http:
        r = await http.post("/chat/completions", json=chat("m"))
        assert r.status_code == 200
        with pytest.raises(ValueError):
            r.json()
        r = await http.post("/chat/completions", json=chat("m", stream=True))
        with pytest.raises(ValueError):
            [json.loads(e) for e in sse_events(r.text) if e != "[DONE]"]
        assert server.stats()["by_status"] == {"malformed": 2}


async def test_fault_slow_body() -> None:
    async with (
        serve(faults=Faults(slow=1.0, slow_seconds=0.4)) as server,
        client(server.url) as http,
    ):
        start = time.perf_counter()
        r = await http.post("/chat/completions", json=chat("s"))
        assert time.perf_counter() - start >= 0.35
        assert r.json()["choices"][0]["message"]["content"] == expected_reply(chat("s")).text
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/chat/completions", json=chat("s"), timeout=0.02)


async def test_faults_and_latencies_are_deterministic_under_a_seed() -> None:
    cfg = SimConfig(
        seed=11,
        faults=Faults.uniform_5xx(0.4),
        latency=Latency(ttft=0.01, jitter=0.5),
    )
    bodies = [chat(f"item {i}") for i in range(40)]

    async def run(order: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
        async with serve(cfg) as server, client(server.url) as http:
            # Two rounds: the second is everyone's attempt 1, drawn afresh.
            seen: dict[str, tuple[int, int]] = {}
            for _ in range(2):
                rs = await asyncio.gather(*(http.post("/chat/completions", json=b) for b in order))
                for b, r in zip(order, rs, strict=True):
                    seen[content_key(b) + r.headers["x-sim-attempt"]] = (r.status_code, 0)
            return seen

    forward = await run(bodies)
    backward = await run(bodies[::-1])
    assert forward == backward
    for b in bodies:
        for attempt in (0, 1):
            fault = plan(b, attempt=attempt, config=cfg).fault
            assert forward[content_key(b) + str(attempt)][0] == (int(fault) if fault else 200)
    assert {s for s, _ in forward.values()} == {200, 500, 502, 503}


async def test_capacity_mode_latency_grows_with_concurrency() -> None:
    cfg = SimConfig(latency=Latency(ttft=0.04), capacity=4, capacity_slowdown=1.0)
    async with serve(cfg) as server, client(server.url) as http:
        start = time.perf_counter()
        await http.post("/chat/completions", json=chat("alone"))
        alone = time.perf_counter() - start
        start = time.perf_counter()
        await asyncio.gather(
            *(http.post("/chat/completions", json=chat(str(i))) for i in range(16))
        )
        crowded = time.perf_counter() - start
        # 16 requests through 4 slots: 4 waves, each slowed by up to 1.75×.
        assert crowded > 0.2 and crowded > 3 * alone
    overloaded = SimConfig(latency=Latency(ttft=0.05), capacity=1, capacity_queue=2)
    async with serve(overloaded) as server, client(server.url) as http:
        rs = await asyncio.gather(
            *(http.post("/chat/completions", json=chat(str(i))) for i in range(6))
        )
        codes = sorted(r.status_code for r in rs)
        assert codes.count(200) >= 3 and 503 in codes


async def test_latency_follows_the_seeded_plan() -> None:
    cfg = SimConfig(seed=2, latency=Latency(ttft=0.1, jitter=0.8), reply_tokens=(5, 5))
    bodies = [chat(f"latency {i}") for i in range(6)]
    async with serve(cfg) as server, client(server.url) as http:

        async def timed(body: dict[str, Any]) -> float:
            start = time.perf_counter()
            await http.post("/chat/completions", json=body)
            return time.perf_counter() - start

        elapsed = await asyncio.gather(*(timed(b) for b in bodies))
    planned = [plan(b, config=cfg).total(5) for b in bodies]
    assert len({round(p, 3) for p in planned}) >= 4  # jitter makes them differ
    for seen, want in zip(elapsed, planned, strict=True):
        assert want - 0.005 <= seen < want + 0.3
