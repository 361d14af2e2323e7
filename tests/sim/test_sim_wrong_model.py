"""A wrong --model or base URL shows up against the simulator as it would against the
provider: every request refused with 404, in words that name the mistake."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import surge.sim
from surge.jobs import JobSettings, run_job


@pytest.mark.parametrize(
    ("model", "base_path", "expected"),
    [
        ("gpt-4o-mnii", "/v1", "The model `gpt-4o-mnii` does not exist"),
        ("gpt-4o-mini", "/v2", "Invalid URL (POST /v2/chat/completions)"),
    ],
)
def test_a_wrong_model_or_base_url_fails_with_the_providers_404(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, base_path: str, expected: str
) -> None:
    monkeypatch.setenv("SURGE_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"Say {i}"}) + "\n" for i in range(3)))
    output = tmp_path / "out.jsonl"
    with surge.sim.serve_in_thread(profile="fast", any_model=False) as server:
        settings = JobSettings(
            input=str(source), output=str(output), base_url=server.base_url + base_path,
            model=model, max_retries=2, timeout=5.0,
        )  # fmt: skip
        report = asyncio.run(run_job(settings))
        stats = server.stats()
    assert report.summary.done == 0
    # A wrong model and a wrong base path both show in the stats as 404s, nothing else.
    assert stats["by_status"] == {"404": stats["requests"]} and stats["requests"] >= 1
    errors = Path(f"{output}.errors.jsonl").read_text()
    assert expected in errors or expected in str(report.fault), (errors, report.fault)
