"""`surge run --ray`: the job's calls sent from Ray workers, its journal unchanged.

A real subprocess, which starts its own local Ray (a few seconds), against the
simulator on a thread of this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

import surge.sim

SECRET = "sk-test-7d01c9e2a4b8f356-secret"


def test_surge_run_ray_answers_every_line_and_resumes_from_its_journal(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    with source.open("w") as handle:
        for i in range(40):
            body = {"model": "sim-small", "messages": [{"role": "user", "content": f"Q{i}"}]}
            line = {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions"}
            handle.write(json.dumps({**line, "body": body}) + "\n")
    out = tmp_path / "out.jsonl"
    env = {
        **os.environ,
        "OPENAI_API_KEY": SECRET,
        "SURGE_CACHE_DIR": str(tmp_path / "cache"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    with surge.sim.serve_in_thread(api_keys=frozenset({SECRET}), rpm=1200) as server:
        command = [
            sys.executable, "-m", "surge.cli", "run", str(source), "-o", str(out),
            "--base-url", server.url, "--ray", "--ray-workers", "2", "--no-progress",
        ]  # fmt: skip
        first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stdout + first.stderr
        assert server.stats()["by_status"] == {"200": 40}  # the key reached the workers
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        assert server.stats()["requests"] == 40  # resumed from the journal: nothing re-sent
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(f"q{i}" for i in range(40))
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert SECRET not in out.read_text() + first.stdout + first.stderr


def test_surge_run_ray_with_an_unreachable_address_fails_at_once(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"custom_id": "a", "body": {"messages": []}, "url": "/v1/chat/completions"}\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "surge.cli", "run", str(source), "-o", str(tmp_path / "o.jsonl"),
         "--base-url", "http://127.0.0.1:9/v1", "--ray-address", "127.0.0.1:1", "--no-progress"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    message = " ".join(done.stderr.split())
    assert "no Ray cluster answers" in message and "HINT" in message
