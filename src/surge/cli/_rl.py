"""`surge rl demo | train | report`: the async-RL demo, config-file training, its plots.

`surge rl demo` trains a tiny transformer to reverse digit strings, sync then async.

Prints reward against wall time for both runs, with the staleness actually observed and
how busy the generator and trainer were, so the trade-off is visible on a laptop. torch
is imported only when the command runs: the rest of the CLI works without the rl extra.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from surge.cli import app

if TYPE_CHECKING:
    from surge.rl import StepStats

rl_app = typer.Typer(
    name="rl",
    help="Asynchronous RL training of language models (needs the rl extra: torch).",
    no_args_is_help=True,
)
app.add_typer(rl_app, name="rl")


def _run(
    mode: str,
    *,
    steps: int,
    max_staleness: int,
    length: int,
    digits: int,
    engine: str,
    seed: int,
    sync_threads: int,
    console: Console,
    server: bool = False,
) -> list[StepStats]:
    import torch

    from surge.rl import ReverseDigits, RLConfig, TinyLM, TinyLMConfig, Trainer

    task = ReverseDigits(length=length, digits=digits)
    torch.manual_seed(seed)
    model = TinyLM(TinyLMConfig(vocab_size=task.vocab_size))
    # Same two cores both ways: sync takes turns in one process with every core per
    # phase; async overlaps a generator process and the trainer, one share each.
    knobs: dict[str, Any] = {
        "mode": mode,
        "seed": seed,
        "engine": "thread" if mode == "sync" else engine,
    }
    if mode == "sync":
        # The best synchronous setup measured on 2 CPU cores: a model this small gains
        # nothing from a second intra-op thread (see BENCHMARKS.md, "Async RL").
        knobs["generator_threads"] = knobs["trainer_threads"] = sync_threads
    if mode == "async":
        knobs["max_staleness"] = max_staleness
    trainer = Trainer(model, task, RLConfig(**knobs))
    label = "sync" if mode == "sync" else f"async k={max_staleness}"
    hosted: Any = contextlib.nullcontext()
    if server and mode == "async":  # generation over HTTP on a simulator-hosted policy
        from surge.sim._policy import hosted_policy

        hosted, label = hosted_policy(trainer), f"{label} (server)"
    history: list[StepStats] = []
    every = max(1, steps // 10)
    with hosted, console.status(f"training {label}…"):
        for stats in trainer.run(steps):
            history.append(stats)
            if stats.step % every == 0 or stats.step == steps - 1:
                window = history[-every:]
                console.print(
                    f"  {label} step {stats.step + 1:4d} {stats.wall_seconds:6.1f}s "
                    f"reward {sum(s.reward_mean for s in window) / len(window):.3f} "
                    f"lag<={stats.lag_max}",
                    highlight=False,
                )
    return history


@rl_app.command("demo")
def demo(
    steps: int = typer.Option(150, min=1, help="Optimizer steps per run."),
    max_staleness: int = typer.Option(
        2, min=0, help="Async bound in policy versions (TRL max_staleness)."
    ),
    mode: str = typer.Option("both", help="both, sync or async."),
    length: int = typer.Option(5, min=1, help="Digits to reverse."),
    digits: int = typer.Option(4, min=2, max=10, help="Distinct digits (chance = 1/digits)."),
    engine: str = typer.Option(
        "thread", help="Async generator placement: thread, or process (own process, gloo)."
    ),
    sync_threads: int = typer.Option(1, min=1, help="Intra-op threads per sync phase."),
    seed: int = typer.Option(0, help="Seed for weights, prompts and sampling."),
    target: float = typer.Option(0.8, help="Reward level to time (10-step mean)."),
    server: bool = typer.Option(
        False,
        "--server",
        help="Async run: generate over HTTP on a simulator-hosted copy of the policy "
        "(SGLang's protocol, weights over a gloo group standing in for NCCL).",
    ),
) -> None:
    """Train the demo task both ways and print reward against wall time."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise typer.BadParameter(
            "surge rl needs torch. HINT: pip install 'surge[rl]'", param_hint="rl"
        ) from None
    if mode not in ("both", "sync", "async"):
        raise typer.BadParameter("use both, sync or async", param_hint="--mode")
    if engine not in ("process", "thread"):
        raise typer.BadParameter("use process or thread", param_hint="--engine")
    console = Console()
    console.print(
        f"ReverseDigits(length={length}, digits={digits}): reward = fraction of digits "
        f"in the right place; chance is {1 / digits:.2f}."
    )
    runs: dict[str, list[StepStats]] = {}
    for m in ("sync", "async") if mode == "both" else (mode,):
        runs[m] = _run(
            m,
            steps=steps,
            max_staleness=max_staleness,
            length=length,
            digits=digits,
            engine=engine,
            seed=seed,
            sync_threads=sync_threads,
            console=console,
            server=server,
        )
    table = Table(title="surge rl demo")
    cols = ("run", "wall", "s/step", f"to {target:g}", "r@10", "r@end", "lag")
    for col in (*cols, "gen", "train"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for name, hist in runs.items():
        last, first = hist[-10:], hist[:10]
        wall = hist[-1].wall_seconds
        table.add_row(
            "sync" if name == "sync" else f"async{max_staleness}",
            f"{wall:.1f}s",
            f"{wall / len(hist):.3f}",
            _fmt(_time_to(hist, target)),
            f"{sum(s.reward_mean for s in first) / len(first):.3f}",
            f"{sum(s.reward_mean for s in last) / len(last):.3f}",
            str(max(s.lag_max for s in hist)),
            f"{hist[-1].generator_busy:.0%}",
            f"{hist[-1].trainer_busy:.0%}",
        )
    console.print(table)
    console.print(
        f"async{max_staleness}: max_staleness={max_staleness}; r@10/r@end: mean reward of "
        "the first/last 10 steps; gen/train: busy fraction."
    )
    if len(runs) == 2:
        w_sync, w_async = runs["sync"][-1].wall_seconds, runs["async"][-1].wall_seconds
        line = f"{steps} steps: sync {w_sync:.1f}s, async {w_async:.1f}s ({w_sync / w_async:.2f}x)"
        t_sync, t_async = _time_to(runs["sync"], target), _time_to(runs["async"], target)
        if t_sync is not None and t_async is not None:
            line += (
                f"; to reward {target:g}: sync {t_sync:.1f}s, async {t_async:.1f}s "
                f"({t_sync / t_async:.2f}x)"
            )
        console.print(line + ".")


def _time_to(history: list[StepStats], target: float) -> float | None:
    """Wall seconds until the 10-step mean reward first reaches ``target``."""
    for i in range(9, len(history)):
        if sum(s.reward_mean for s in history[i - 9 : i + 1]) / 10 >= target:
            return history[i].wall_seconds
    return None


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise typer.BadParameter(
            "surge rl needs torch. HINT: pip install 'surge[rl]'", param_hint="rl"
        ) from None


@rl_app.command("train")
def train(
    config: Path = typer.Argument(..., help="Run config: YAML (.yaml/.yml) or TOML (.toml)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's checkpoint."),
    steps: int | None = typer.Option(None, min=1, help="Override the config's steps."),
    wandb: bool = typer.Option(False, "--wandb", help="Also log to Weights & Biases."),
) -> None:
    """Train a model on a task as a config file describes (see README, "Training a
    model on your task")."""
    _need_torch()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from surge.rl._errors import RLError
    from surge.rl._train_config import load_train_config
    from surge.rl._train_run import train_from_config

    console = Console()
    try:
        cfg = load_train_config(config)
    except RLError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    total = steps or cfg.steps
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    last_eval: dict[str, float] = {}
    with Progress(*columns, console=console, transient=False) as bar:
        job = bar.add_task(f"{cfg.rl.mode} → {cfg.output}", total=total, info="")

        def on_step(done: int, total_steps: int, record: dict[str, Any]) -> None:
            if "eval_accuracy" in record:
                last_eval["acc"] = record["eval_accuracy"]
            acc = f" eval acc {last_eval['acc']:.3f}" if "acc" in last_eval else ""
            info = (
                f"reward {record['reward_mean']:.3f}{acc} lag≤{record['lag_max']} "
                f"ess {record['ess']:.3f} kl {record['kl']:.4f} "
                f"{record['tokens_per_second']:.0f} tok/s"
            )
            bar.update(job, completed=done, total=total_steps, info=info)

        try:
            run_dir = train_from_config(
                cfg, resume=resume, wandb=wandb, steps=steps, progress=on_step
            )
        except RLError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
    console.print(
        f"metrics: {run_dir / 'metrics.jsonl'}  checkpoint: {run_dir / 'checkpoint.pt'}  "
        f"plot: surge rl report {run_dir}",
        highlight=False,
    )


@rl_app.command("report")
def report(
    runs: list[Path] = typer.Argument(..., help="Run folders written by `surge rl train`."),
    out: Path = typer.Option(Path("rl-report.png"), "--out", "-o", help="PNG to write."),
    window: int = typer.Option(10, min=1, help="Steps in the reward's moving mean."),
) -> None:
    """Reward and held-out accuracy against wall time, the runs side by side."""
    from surge.rl._errors import RLError
    from surge.rl._report import plot_runs

    console = Console()
    try:
        path = plot_runs(list(runs), out, window=window)
    except RLError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"wrote {path}", highlight=False)
