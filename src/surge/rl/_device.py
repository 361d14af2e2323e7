"""Where the trainer and the generators run: one ``device=`` knob, checked at the door.

``None`` means CUDA when this process sees a GPU (``cuda``, the current device), the CPU
otherwise. Anything else is what ``torch.device`` accepts (``"cpu"``, ``"cuda:1"``,
``"meta"`` for shape-only dry runs) and must exist on this machine.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Device", "model_device", "resolve_device"]

Device = str | torch.device


def resolve_device(device: Device | None, *, what: str = "device") -> torch.device:
    """The ``torch.device`` for ``device``, or a ``ValueError`` with a HINT."""
    if device is None:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"{what}={device!r} is not a device. HINT: use 'cpu', 'cuda', 'cuda:1' or 'meta'."
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{what}={device!r} but this process sees no CUDA device. HINT: leave {what} "
                "unset (CUDA when present, else the CPU) or pass 'cpu'."
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"{what}={device!r} but this process sees {count} CUDA device(s). "
                f"HINT: pick an index below {count} (CUDA_VISIBLE_DEVICES renumbers them)."
            )
    elif resolved.type not in ("cpu", "meta"):
        raise ValueError(
            f"{what}={device!r}: surge.rl runs on 'cpu' and 'cuda' devices ('meta' for dry "
            "runs). HINT: pass one of those."
        )
    return resolved


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (the CPU for an empty model)."""
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")
