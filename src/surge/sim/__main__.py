"""`python -m surge.sim [OPTIONS]`: the same as `surge sim [OPTIONS]`."""

import typer

from surge.cli._sim import sim

if __name__ == "__main__":
    typer.run(sim)
