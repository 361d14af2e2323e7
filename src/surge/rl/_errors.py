"""Errors raised by surge.rl.

RLError
 ├── WeightSyncTimeout   no weights of the wanted version arrived in time
 └── TrainerStopped      a worker thread or process died; the cause is chained
"""

from __future__ import annotations

__all__ = ["RLError", "TrainerStopped", "WeightSyncTimeout"]


class RLError(Exception):
    """Base class of every error surge.rl raises on purpose."""


class WeightSyncTimeout(RLError):
    """Weights of the wanted policy version did not arrive within the timeout."""


class TrainerStopped(RLError):
    """The generator or trainer worker failed; the original exception is ``__cause__``."""
