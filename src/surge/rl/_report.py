"""``surge rl report``: reward and held-out accuracy against wall time, runs side by side.

Reads the ``metrics.jsonl`` of each run folder and draws two panels sharing the time
axis, one line per run (labelled by its mode and staleness bound), in the style of
``surge report``: matplotlib's Agg backend, default colour cycle, PNG out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from surge.rl._errors import RLError
from surge.rl._metrics import read_metrics

__all__ = ["label_of", "plot_runs"]


def label_of(run_dir: Path) -> str:
    """``name (async k=2)`` from the run's saved config, or the folder name alone."""
    for suffix in (".yaml", ".yml", ".toml"):
        path = run_dir / f"config{suffix}"
        if path.exists():
            from surge.rl._train_config import load_train_config

            try:
                rl = load_train_config(path).rl
            except RLError:
                break
            mode = "sync" if rl.mode == "sync" else f"async k={rl.max_staleness}"
            return f"{run_dir.name} ({mode})"
    return run_dir.name


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_runs(run_dirs: list[Path], out: Path, *, window: int = 10) -> Path:
    """Draw every run's reward (``window``-step mean) and eval accuracy against training
    wall time into ``out`` (PNG)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=110)
    reward_ax, acc_ax = figure.subplots(1, 2, sharex=True)
    drawn = 0
    for run_dir in run_dirs:
        records: list[dict[str, Any]] = read_metrics(run_dir)
        label = label_of(run_dir)
        steps = [r for r in records if "reward_mean" in r]
        if steps:
            reward_ax.plot(
                [r["wall_seconds"] for r in steps],
                _smooth([r["reward_mean"] for r in steps], window),
                label=label,
            )
            drawn += 1
        evals = [r for r in records if "eval_accuracy" in r]
        if evals:
            acc_ax.plot(
                [r["wall_seconds"] for r in evals],
                [r["eval_accuracy"] for r in evals],
                marker="o",
                markersize=3,
                label=label,
            )
    if not drawn:
        raise RLError("no training steps in these runs yet. HINT: pass run folders with steps.")
    reward_ax.set_title(f"reward ({window}-step mean)")
    acc_ax.set_title("held-out accuracy")
    for ax in (reward_ax, acc_ax):
        ax.set_xlabel("training wall time (s, evaluation excluded)")
        ax.grid(alpha=0.3)
    reward_ax.legend(fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out
