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
        body = {"messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(url + "/chat/completions", json=body, headers={"x-api-key": "k"})
        assert r.status_code in (500, 502, 503)
        assert r.headers["x-ratelimit-limit-requests"] == "120"
        assert httpx.post(url + "/chat/completions", json=body).status_code == 401
    finally:
        assert "stopped" in stop(proc)
    assert "rpm=120" in banner


def test_python_m_surge_sim_with_a_profile_and_latency() -> None:
    proc, url, banner = start(
        "-m", "surge.sim", "--port", "0", "--profile", "typical", "--latency", "0"
    )
    try:
        r = httpx.post(url + "/chat/completions", json={"messages": []})
        assert r.status_code == 200 and r.elapsed.total_seconds() < 0.5
    finally:
        stop(proc)
    assert "profile=typical" in banner


def test_bad_options_are_refused() -> None:
    # One process: each one pays the CLI's import time; Latency.parse is tested above.
    proc = subprocess.run(
        [sys.executable, "-m", "surge.sim", "--profile", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "profile" in proc.stderr, proc.stderr
