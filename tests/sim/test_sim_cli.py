"""`surge sim` as a real process: it serves, applies its options and stops on SIGINT."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import pytest
import typer

from surge.cli._sim import parse_latency

# A group with the one command, so the test does not depend on which other commands exist.
LAUNCH = """
import typer
from surge.cli._sim import sim
group = typer.Typer()
group.command("sim")(sim)
group.callback()(lambda: None)
group()
"""


def test_parse_latency() -> None:
    assert parse_latency("0") == {"ttft": 0.0, "per_token": 0.0, "jitter": 0.0}
    assert parse_latency("0.5,0.01") == {"ttft": 0.5, "per_token": 0.01}
    with pytest.raises(typer.BadParameter):
        parse_latency("fast")
    with pytest.raises(typer.BadParameter):
        parse_latency("1,2,3,4")


def test_sim_command_serves_until_interrupted() -> None:
    args = ["sim", "--port", "0", "--rpm", "120", "--fail-5xx", "1", "--seed", "3",
            "--api-key", "k"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *args], stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        banner = ""
        while "Anthropic" not in banner:
            line = proc.stderr.readline()
            assert line, f"sim exited early: {banner}"
            banner += line
        url = re.search(r"http://127\.0\.0\.1:\d+/v1", banner)
        assert url is not None and "rpm=120" in banner
        headers = {"authorization": "Bearer k"}
        body = {"messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(url.group() + "/chat/completions", json=body, headers=headers)
        assert r.status_code in (500, 502, 503)
        assert r.headers["x-ratelimit-limit-requests"] == "120"
        r = httpx.post(url.group() + "/chat/completions", json=body)
        assert r.status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "stopped" in err


def test_sim_command_rejects_bad_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCH, "sim", "--profile", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0 and "profile" in proc.stderr
