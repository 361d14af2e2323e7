"""`surge sim` as a real process: it serves, applies its options and stops on SIGINT.

The command runs in a subprocess, so these tests never import `surge.cli` themselves.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import pytest

from surge.sim import Latency


def test_latency_option_format() -> None:
    assert Latency.parse("0") == Latency()
    assert Latency.parse("0.5,0.01") == Latency(ttft=0.5, per_token=0.01)
    for bad in ("fast", "1,2,3,4", "1,", ""):
        with pytest.raises(ValueError):
            Latency.parse(bad)


def start(*args: str) -> tuple[subprocess.Popen[str], str, str]:
    proc = subprocess.Popen([sys.executable, *args], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    banner = ""
    while "Anthropic" not in banner:
        line = proc.stderr.readline()
        if not line:
            proc.kill()
            pytest.fail(f"sim exited early: {banner}")
        banner += line
    url = re.search(r"http://127\.0\.0\.1:\d+/v1", banner)
    assert url is not None
    return proc, url.group(), banner


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return err


def test_surge_sim_serves_until_interrupted() -> None:
    options = ["--port", "0", "--rpm", "120", "--fail-5xx", "1", "--seed", "3", "--api-key", "k"]
    proc, url, banner = start("-c", "from surge.cli import main; main()", "sim", *options)
    try:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(url + "/chat/completions", json=body, headers={"x-api-key": "k"})
        assert r.status_code in (500, 502, 503)
        assert r.headers["x-ratelimit-limit-requests"] == "120"
        assert httpx.post(url + "/chat/completions", json=body).status_code == 401
        # By default `surge sim` serves known models only: a typo gets OpenAI's 404.
        typo = {**body, "model": "gpt-4o-mnii"}
        r = httpx.post(url + "/chat/completions", json=typo, headers={"x-api-key": "k"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        # A wrong base path (no /v1, or another prefix) is not served either.
        r = httpx.post(url[: -len("/v1")] + "/v2/chat/completions", json=body)
        assert r.status_code == 404 and "HINT" in r.json()["error"]["message"]
    finally:
        assert "stopped" in stop(proc)
    assert "rpm=120" in banner
    assert "models: sim-small, sim-large, sim-embed" in banner


def test_python_m_surge_sim_with_a_profile_and_latency() -> None:
    proc, url, banner = start(
        "-m", "surge.sim", "--port", "0", "--profile", "typical", "--latency", "0",
        "--any-model",
    )  # fmt: skip
    try:
        r = httpx.post(url + "/chat/completions", json={"model": "m", "messages": []})
        assert r.status_code == 200 and r.elapsed.total_seconds() < 0.5
    finally:
        stop(proc)
    assert "profile=typical" in banner and "models: any" in banner


def test_models_option_sets_the_served_models() -> None:
    proc, url, banner = start("-m", "surge.sim", "--port", "0", "--models", "mine, other")
    try:
        listed = httpx.get(url + "/models").json()["data"]
        assert [m["id"] for m in listed] == ["mine", "other"]
        body = {"model": "mine", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
        assert httpx.post(url + "/chat/completions", json=body).status_code == 200
        r = httpx.post(url[: -len("/v1")] + "/v1/messages", json={**body, "model": "sim-small"})
        assert r.status_code == 404
        assert r.json() == {
            "type": "error",
            "error": {"type": "not_found_error", "message": "model: sim-small"},
        }
    finally:
        stop(proc)
    assert "models: mine, other" in banner


def test_bad_options_are_refused() -> None:
    # One process: each one pays the CLI's import time; Latency.parse is tested above.
    proc = subprocess.run(
        [sys.executable, "-m", "surge.sim", "--profile", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "profile" in proc.stderr, proc.stderr
