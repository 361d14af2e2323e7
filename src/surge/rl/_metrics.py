"""Per-step metrics of a training run: a JSONL file, TensorBoard, and wandb if asked.

The JSONL file is the record (``surge rl report`` draws from it; one object per line, so
a crashed run keeps every step it logged); TensorBoard and wandb are views of the same
numbers. TensorBoard goes through ``torch.utils.tensorboard`` when the ``tensorboard``
package is installed; wandb only with ``wandb=True``, and then it must be installed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from surge.rl._errors import RLError

__all__ = ["MetricsLogger", "read_metrics"]


class MetricsLogger:
    """Write ``{"step": .., **metrics}`` lines to ``run_dir/metrics.jsonl`` and mirror
    the numbers to TensorBoard (``run_dir/tensorboard``) and, if asked, wandb."""

    def __init__(
        self,
        run_dir: Path,
        *,
        tensorboard: bool = True,
        wandb: bool = False,
        run_name: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self._wandb: Any = None
        if wandb:  # checked first: a run that cannot start leaves no metrics file behind
            try:
                import wandb as wandb_module
            except ImportError:
                raise RLError(
                    "--wandb needs the wandb package. HINT: pip install wandb (set "
                    "WANDB_MODE=offline to log without an account)."
                ) from None
            self._wandb = wandb_module.init(
                project="surge-rl", name=run_name, dir=str(run_dir), config=config
            )
        self.path = run_dir / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: the JSONL file still has it all
                self._tb = None
            else:
                self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **metrics}
        self._file.write(json.dumps(record, default=_plain) + "\n")
        self._file.flush()
        numbers = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        if self._tb is not None:
            for name, value in numbers.items():
                self._tb.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl``; a half-written last line is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise RLError(f"{path}: no metrics here. HINT: pass a folder `surge rl train` wrote.")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the line a crash cut short
    return out
