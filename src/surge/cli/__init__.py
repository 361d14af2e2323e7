"""The `surge` command line. Each subcommand lives in its own private module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="surge",
    help="Run many LLM and embedding calls at the speed of the rate limit.",
    no_args_is_help=True,
    add_completion=False,
)


def main() -> None:
    # Import for their side effect: each module registers its commands on `app`.
    from surge.cli import _demo  # noqa: F401
    from surge.cli import _sim  # noqa: F401

    app()
