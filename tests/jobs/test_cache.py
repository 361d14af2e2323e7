"""The response cache answers only for the server that gave the answer: its key is the
provider, the base URL without credentials, the endpoint and the body."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.jobs.conftest import read_jsonl, write_batch

import surge.sim
from surge.jobs import JobInputError, JobSettings, run_job
from surge.jobs.cache import ResponseCache, server_identity


def run(settings: JobSettings) -> Any:
    return asyncio.run(run_job(settings))


def job(server_url: str, tmp_path: Path, source: Path, name: str, **changes: Any) -> JobSettings:
    values: dict[str, Any] = {
        "input": str(source),
        "output": str(tmp_path / f"{name}.jsonl"),
        "base_url": server_url,
        "concurrency": 8,
        "max_retries": 2,
        "timeout": 5.0,
    }
    values.update(changes)
    return JobSettings(**values)


def test_the_server_identity_drops_credentials_and_keeps_what_selects_the_answer() -> None:
    url = "https://me:pw@Example.COM/openai/deployments/d/?api-key=s3cret&api-version=2024-06&key=k"
    identity = server_identity("openai", url)
    assert identity == "openai https://example.com/openai/deployments/d?api-version=2024-06"
    assert "s3cret" not in identity and "pw" not in identity
    assert server_identity("openai", "http://127.0.0.1:8000/v1/") == server_identity(
        "openai", "http://127.0.0.1:8000/v1"
    )
    assert server_identity("openai", None) == "openai https://api.openai.com/v1"
    assert server_identity("anthropic", None) == "anthropic https://api.anthropic.com/v1"
    assert server_identity("openai", "http://a:1/v1") != server_identity("openai", "http://a:2/v1")


def test_the_key_holds_provider_server_endpoint_and_body(tmp_path: Path) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    url = "/v1/chat/completions"
    keys = {
        ResponseCache(tmp_path, provider=p, base_url=b).key(u, x)
        for p, b, u, x in [
            ("openai", "http://a/v1", url, body),
            ("anthropic", "http://a/v1", url, body),
            ("openai", "http://b/v1", url, body),
            ("openai", "http://a/v1", "/v1/messages", body),
            ("openai", "http://a/v1", url, {**body, "model": "n"}),
        ]
    }
    assert len(keys) == 5
    # Credentials never change the key (and so are never part of it).
    plain = ResponseCache(tmp_path, provider="openai", base_url="http://a/v1")
    with_secret = ResponseCache(tmp_path, provider="openai", base_url="http://u:p@a/v1?key=s")
    assert plain.key(url, body) == with_secret.key(url, body)


def test_the_same_job_against_another_server_is_asked_again(tmp_path: Path) -> None:
    source = write_batch(tmp_path / "in.jsonl", 6)
    with (
        surge.sim.serve_in_thread(profile="fast", seed=1) as first,
        surge.sim.serve_in_thread(profile="fast", seed=2) as second,
    ):
        run(job(first.url, tmp_path, source, "first"))
        again = run(job(first.url, tmp_path, source, "again"))
        other = run(job(second.url, tmp_path, source, "other"))
        assert first.stats()["requests"] == 6, "the same server: answered from the cache"
        assert second.stats()["requests"] == 6, "another server: asked again"
    assert again.summary.cached == 6 and other.summary.cached == 0


def test_an_anthropic_job_never_gets_answers_cached_from_openai(
    sim: surge.sim.SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    source = write_batch(tmp_path / "in.jsonl", 4)
    run(job(sim.url, tmp_path, source, "openai"))
    report = run(job(sim.url, tmp_path, source, "anthropic", provider="anthropic"))
    assert report.summary.cached == 0 and report.summary.done == 4
    bodies = [line["response"]["body"] for line in read_jsonl(tmp_path / "anthropic.jsonl")]
    assert all(body.get("type") == "message" for body in bodies), "Messages API answers"


def test_a_base_url_where_nothing_listens_is_not_answered_from_the_cache(
    sim: surge.sim.SimServer, tmp_path: Path
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 2)
    run(job(sim.url, tmp_path, source, "first"))
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = run(job(f"http://127.0.0.1:{port}/v1", tmp_path, source, "nowhere", max_retries=0))
    assert report.summary.cached == 0 and report.summary.done == 0


def test_the_cli_says_how_many_came_from_the_cache_and_how_to_ask_again(
    sim: surge.sim.SimServer, tmp_path: Path
) -> None:
    source = write_batch(tmp_path / "in.jsonl", 3)
    for name in ("first", "second"):
        process = subprocess.run(
            [sys.executable, "-m", "surge.cli", "run", str(source), "-o", str(tmp_path / name),
             "--base-url", sim.url, "--no-progress"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert process.returncode == 0, process.stderr
    assert "3 answered from the cache" in process.stderr
    assert "--no-cache asks again" in process.stderr
    # Credentials in the base URL are not part of the key, nor written anywhere.
    secret_url = sim.url.replace("http://", "http://user:hunter2@")
    assert run(job(secret_url, tmp_path, source, "third")).summary.cached == 3
    written = [*(tmp_path / "cache").iterdir(), *tmp_path.glob("third*")]
    assert Path(tmp_path / "third.jsonl.journal") in written
    for path in written:
        assert b"hunter2" not in path.read_bytes(), path


def test_a_damaged_cache_is_named_with_how_to_go_on(tmp_path: Path) -> None:
    (tmp_path / "responses.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(JobInputError, match=r"responses.sqlite cannot be used .*--no-cache"):
        ResponseCache(tmp_path, provider="openai", base_url=None)
