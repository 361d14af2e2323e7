"""benchmarks/rl_gpu.py, the GPU device check: skips cleanly without CUDA, and its code
runs end to end (on the CPU, tiny shapes) so a GPU session finds a working script."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "rl_gpu.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("rl_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_and_exits_zero() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA device visible" in done.stdout and "skipping" in done.stdout


def test_the_script_runs_end_to_end_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    module = _load()
    out = tmp_path / "figures.json"
    argv = ["rl_gpu.py", "--device", "cpu", "--small", "--steps", "2", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    saved = torch.get_num_threads()
    try:
        assert module.main() == 0
    finally:
        torch.set_num_threads(saved)
    text = capsys.readouterr().out
    assert "dry run on the CPU" in text
    assert "async/sync steps/s" in text and "publish + pull" in text
    figures = json.loads(out.read_text())
    assert [r["run"] for r in figures["training"]] == ["sync", "async k=2"]
    assert all(r["median_ms"] > 0 for r in figures["weight_sync"])
