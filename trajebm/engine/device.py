"""Device resolution shared by every command: a torch device, or a clear error."""

from __future__ import annotations

import torch

from trajebm.engine.errors import UsageError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device, with a clear error when CUDA is asked for but absent."""
    try:
        device = torch.device(device or "cpu")
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("CUDA is not available on this machine; use --device cpu")
    return device
