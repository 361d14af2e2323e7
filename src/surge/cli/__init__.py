"""The `surge` command line. Each subcommand lives in its own private module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="surge",
    help="Run many LLM and embedding calls at the speed of the rate limit.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """surge: make AI workloads fast by overlapping the waiting."""


def main() -> None:
    from surge.cli import _rl  # noqa: F401  (`surge rl`; imports torch only when run)

    app()


# Imported for their side effect: each module registers its commands on `app`.
from surge.cli import _demo, _report, _run, _sim  # noqa: E402, F401
