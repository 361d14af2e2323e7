"""The shared limiter on a real redis-server (started here on a loopback Unix socket).

Skipped, saying why, only where redis-server or the redis client is not installed
(`apt-get install redis-server`, `pip install 'surge[redis]'`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import surge
import surge.sim
from surge._feedback import RateLimitHints
from surge._shared import RedisStore
from surge._shared._ledger import exchange, new_state
from surge.testing import redis_server

if TYPE_CHECKING:  # a fixture's type; `pytest` alone does not put the root on sys.path
    from tests.conftest import Fleet

pytest.importorskip("redis", reason="the redis client is not installed: pip install redis")
if shutil.which("redis-server") is None:
    pytest.skip(
        "redis-server is not installed (apt-get install -y redis-server)", allow_module_level=True
    )


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_redis_server_answers_in_the_block_and_is_gone_after(tcp: bool) -> None:
    import redis

    with redis_server(tcp=tcp) as url:
        assert url.startswith("redis://127.0.0.1:" if tcp else "unix://")
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        assert client.ping() is True
        client.close()

        async def one_call() -> None:  # surge's shared limiter takes this URL form
            limiter = surge.Limiter(rpm=600, shared=url, key="redis-server-helper")
            limiter.release(await limiter.acquire())

        asyncio.run(one_call())
    if not tcp:
        assert not Path(url.removeprefix("unix://")).parent.exists()
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    client.close()


def test_two_workers_on_redis_share_one_rate(redis_url: str, fleet: Fleet) -> None:
    span = asyncio.run(
        fleet.share(redis_url, 2, 150, rpm=6000, key="redis-two-workers", latency=0.05)
    )
    rate, burst = 100.0, 100.0
    assert len(fleet.admitted) == 300 and len(fleet.limiters) == 2
    physical = (300 - burst) / rate
    assert span >= physical * 0.97
    assert span <= physical * 1.25 + 0.3  # real time on a loaded machine
    for window in (0.5, 1.0):
        assert fleet.max_in_window(window) <= burst + rate * window + 2
    assert all(lim._shared is not None and lim._shared.exchanges < 150 for lim in fleet.limiters)


def test_a_retry_after_on_one_process_reaches_the_other_through_redis(redis_url: str) -> None:
    async def main() -> float:
        first = surge.Limiter(rpm=6000, shared=redis_url, key="redis-pause")
        second = surge.Limiter(rpm=6000, shared=redis_url, key="redis-pause")
        permit = await first.acquire()
        # Timed from the 429, not from the second's request: a stall of this process
        # in between (a loaded machine) then cannot make the pause look short.
        start = time.monotonic()
        first.release(permit, outcome="rate_limited", hints=RateLimitHints(retry_after=0.6))
        await asyncio.sleep(0.05)
        permit = await second.acquire()
        second.release(permit)
        return time.monotonic() - start

    waited = asyncio.run(main())
    assert 0.55 <= waited <= 1.5


def test_the_lua_ledger_agrees_with_the_python_one(redis_url: str) -> None:
    """The same requests, in the same order, get the same grants, waits and queue."""
    store = RedisStore(redis_url)
    state = new_state()
    requests: list[dict[str, Any]] = [
        {
            "client": "a",
            "ttl": 3.0,
            "defaults": {"requests": {"rate": 1.0, "cap": 10.0}},
            "need": {"requests": 2.0},
            "want": {"requests": 8.0},
        },
        {"client": "b", "ttl": 3.0, "need": {"requests": 3.0}, "want": {"requests": 8.0}},
        {"client": "c", "ttl": 3.0, "need": {"requests": 9.0}, "want": {"requests": 9.0}},
        {"client": "b", "ttl": 3.0, "need": {"requests": 3.0}, "want": {"requests": 3.0}},
        {"client": "a", "ttl": 3.0, "held": {}, "correct": {"requests": 0.0}, "pause": 0.0},
        {  # the server reveals a burst of 20: 15 left
            "client": "d",
            "ttl": 3.0,
            "config": {"requests": {"rate": 1.0, "cap": 20.0}},
            "learn": {"requests": 15.0},
            "need": {"requests": 1.0},
            "want": {"requests": 4.0},
        },
    ]

    async def through_redis() -> list[dict[str, Any]]:
        replies = [await store.exchange("lua-parity", r) for r in requests]
        await store.aclose()
        return replies

    redis_replies = asyncio.run(through_redis())
    python_replies = [exchange(state, r, 100.0) for r in requests]
    for got, expected in zip(redis_replies, python_replies, strict=True):
        assert got["lease"] == expected["lease"]
        assert got["granted"].keys() == expected["granted"].keys()
        for name, amount in expected["granted"].items():
            assert got["granted"][name] == pytest.approx(amount, abs=0.01)
        assert got["wait"] == pytest.approx(expected["wait"], abs=0.05)
        assert got["clients"] == expected["clients"]


def test_an_unreachable_redis_fails_at_once_with_a_hint(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="HINT: start Redis") as caught:
        surge.Limiter(rpm=10, shared="redis://:s3cret@127.0.0.1:1/0", key="k")
    assert time.monotonic() - start < 5
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ConnectionError, match="HINT"):
        surge.Limiter(rpm=10, shared=f"unix://{tmp_path}/nothing.sock", key="k")


def _batch(path: Path, start: int, n: int) -> Path:
    with path.open("w") as handle:
        for i in range(start, start + n):
            body = {
                "model": "sim-small",
                "messages": [{"role": "user", "content": f"Question {i}"}],
                "max_tokens": 16,
            }
            line = {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions"}
            handle.write(json.dumps({**line, "body": body}) + "\n")
    return path


def test_two_surge_run_processes_on_one_key_share_the_limit(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SURGE_CACHE_DIR", str(tmp_path / "cache"))
    rpm, burst, per_process = 3000, 50, 200
    with surge.sim.serve_in_thread(rpm=rpm, burst_seconds=1.0) as server:
        jobs = []
        for p in range(2):
            batch = _batch(tmp_path / f"in{p}.jsonl", p * per_process, per_process)
            command = [
                sys.executable, "-m", "surge.cli", "run", str(batch),
                "-o", str(tmp_path / f"out{p}.jsonl"), "--base-url", server.url,
                "--rpm", str(rpm), "--shared-limit", redis_url, "--shared-key", "cli-two",
                "--no-progress",
            ]  # fmt: skip
            jobs.append(
                subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
            )
        outputs = [job.communicate(timeout=120)[0] for job in jobs]
        stats = server.stats()
    assert [job.returncode for job in jobs] == [0, 0], outputs
    answered = [
        json.loads(line)["custom_id"]
        for p in range(2)
        for line in (tmp_path / f"out{p}.jsonl").read_text().splitlines()
    ]
    assert sorted(answered) == sorted(f"q{i}" for i in range(2 * per_process))
    limited = stats["by_status"].get("429", 0)
    assert limited <= 0.01 * stats["requests"], stats["by_status"]
    started = [second["started"] for second in stats["timeline"]]
    for window in (1, 3):
        for i in range(len(started)):
            assert sum(started[i : i + window]) <= burst + rpm / 60 * (window + 1)
    # Together, not each at the full rate: 400 requests at 50/s with a 50 burst take 7 s.
    assert len(started) >= (2 * per_process - burst) / (rpm / 60) - 1


def test_surge_run_with_an_unreachable_shared_limit_fails_at_once(tmp_path: Path) -> None:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "surge.cli", "run", str(_batch(tmp_path / "in.jsonl", 0, 3)),
         "-o", str(tmp_path / "out.jsonl"), "--base-url", "http://127.0.0.1:9/v1",
         "--shared-limit", "redis://127.0.0.1:1/0", "--no-progress"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    message = " ".join(done.stderr.split())  # rich wraps it
    assert "did not answer" in message and "HINT: start Redis" in message
    assert time.monotonic() - start < 30
