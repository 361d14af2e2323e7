"""`surge rl train CONFIG` and `surge rl report`: a tiny run, resume, bad configs, README."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import surge.cli._rl  # noqa: F401  (registers `surge rl`)
from surge.cli import app

pytest.importorskip("transformers")
pytest.importorskip("yaml")

README = Path(__file__).resolve().parents[2] / "README.md"

TINY = """\
output: {output}
steps: {steps}
eval_every: 2
save_every: 2
device: cpu
task:
  kind: word_problems
  train_size: 40
  eval_size: 8
  max_operand: 3
  kinds: [add]
  max_new_tokens: 3
tokenizer:
  vocab_size: 280
model:
  kind: gpt2
  config: {{n_embd: 16, n_layer: 1, n_head: 2, n_positions: 48}}
warmup:
  steps: 2
  batch_size: 8
rl:
  mode: {mode}
  prompts_per_batch: 2
  group_size: 4
  generator_threads: 1
  trainer_threads: 1
"""


def _write(tmp_path: Path, name: str = "c.yaml", **kw: Any) -> Path:
    values = {"output": str(tmp_path / "run"), "steps": 4, "mode": "sync"} | kw
    path = tmp_path / name
    path.write_text(TINY.format(**values))
    return path


def _train(*args: str) -> Any:
    return CliRunner().invoke(app, ["rl", "train", *args], catch_exceptions=False)


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    return state


def test_a_tiny_config_trains_logs_and_checkpoints(tmp_path: Path) -> None:
    result = _train(str(_write(tmp_path, mode="async")))
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    records = _records(run)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    for key in ("eval_accuracy", "eval_reward", "warmup_loss"):
        assert key in records[0]
    for r in records[1:]:
        for key in (
            "reward_mean", "loss", "kl", "ref_kl", "entropy", "clip_fraction", "ess",
            "lag_max", "tokens_per_second", "update_seconds", "generation_seconds",
            "weight_sync_seconds", "wall_seconds",
        ):  # fmt: skip
            assert key in r, key
    assert "eval_accuracy" in records[2] and "eval_accuracy" in records[4]
    assert [r["wall_seconds"] for r in records] == sorted(r["wall_seconds"] for r in records)
    assert list((run / "tensorboard").iterdir())  # TensorBoard event file
    assert (run / "checkpoint.pt").exists() and (run / "config.yaml").exists()
    assert (run / "tokenizer").is_dir()
    again = _train(str(tmp_path / "c.yaml"))  # the folder holds a run: refuse, say how
    assert again.exit_code == 2 and "--resume" in again.output


def test_resume_continues_at_the_saved_step_with_the_same_weights(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    assert _train(str(_write(tmp_path, "a.yaml", output=straight))).exit_code == 0
    halves = tmp_path / "halves"
    config = _write(tmp_path, "b.yaml", output=halves)
    assert _train(str(config), "--steps", "2").exit_code == 0
    assert torch.load(halves / "checkpoint.pt", weights_only=False)["step"] == 2
    result = _train(str(config), "--resume")
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in _records(halves)] == [0, 1, 2, 3, 4]
    a, b = _weights(straight), _weights(halves)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("  group_size: 4", "  group_sise: 4"), r"c\.yaml, line 24: unknown key 'rl\.group_sise'.*HINT: did you mean 'group_size'"),
        (("  group_size: 4", "  group_size: four"), r"c\.yaml, line 24: rl\.group_size must be an integer, got 'four'.*HINT"),
        (("  mode: sync", "  mode: fast"), r"c\.yaml, line 22: rl\.mode must be one of 'sync', 'async'"),
        (("steps: 4", "stepz: 4"), r"line 2: unknown key 'stepz'.*HINT: did you mean 'steps'"),
        (("  max_new_tokens: 3", "  max_new_tokens: 3.5"), r"line 12: task\.max_new_tokens must be an integer"),
        (("  group_size: 4", "  group_size: 1"), r"line 21: rl: group_size must be >= 2.*HINT"),
    ],
)  # fmt: skip
def test_a_bad_config_names_the_key_the_file_and_the_line(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    path = _write(tmp_path)
    path.write_text(path.read_text().replace(*edit))
    result = _train(str(path))
    assert result.exit_code == 2
    assert re.search(message, " ".join(result.output.split())), result.output
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_toml_config_and_a_missing_dataset_column(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1 + 1 =", "answer": "2"}\n{"prompt": "2 + 2 ="}\n')
    path = tmp_path / "c.toml"
    path.write_text(
        f'output = "{tmp_path / "run"}"\nsteps = 1\n\n[task]\nkind = "dataset"\n'
        f'train = "{data}"\n\n[rl]\nmode = "sync"\ngroup_size = 2\n'
    )
    result = _train(str(path))
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert re.search(
        r"c\.toml, line 6: task\.train: .*train\.jsonl, line 2: missing column 'answer'", text
    ), text
    path.write_text(path.read_text().replace("group_size = 2", "group_size = 2\nbeta = 'x'"))
    result = _train(str(path))
    assert "c.toml, line 11: rl.beta must be a number" in " ".join(result.output.split())


def test_the_readme_config_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = README.read_text()
    section = text.split("## Training a model on your task", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None, "README: the section needs a ```yaml config block"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.yaml").write_text(block.group(1))
    # As written, for 2 steps: this checks that it runs, not that it learns.
    result = _train("train.yaml", "--steps", "2")
    assert result.exit_code == 0, result.output
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "checkpoint.pt").exists()


def test_report_draws_sync_and_async_side_by_side(tmp_path: Path) -> None:
    for mode in ("sync", "async"):
        config = _write(tmp_path, f"{mode}.yaml", output=tmp_path / mode, mode=mode, steps=2)
        assert _train(str(config)).exit_code == 0
    out = tmp_path / "plot.png"
    result = CliRunner().invoke(
        app, ["rl", "report", str(tmp_path / "sync"), str(tmp_path / "async"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from surge.rl._report import label_of

    assert label_of(tmp_path / "async") == "async (async k=1)"
    assert label_of(tmp_path / "sync") == "sync (sync)"


def test_wandb_without_the_package_says_how_to_get_it(tmp_path: Path) -> None:
    try:
        import wandb  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("wandb is installed here")
    result = _train(str(_write(tmp_path)), "--wandb")
    assert result.exit_code == 2
    assert "pip install wandb" in result.output and "WANDB_MODE=offline" in result.output
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing blocks a rerun
