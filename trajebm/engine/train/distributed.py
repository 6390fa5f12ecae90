"""``torchrun`` support: joining the process group and agreeing across ranks.

Without ``torchrun`` (no ``WORLD_SIZE`` > 1) everything here is the single-process identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: str | torch.device = "cpu") -> torch.device:
    """Join the ``torchrun`` process group when launched by it; return this rank's device.

    NCCL is used for CUDA, gloo for CPU; each rank takes ``cuda:LOCAL_RANK``.
    """
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def world() -> tuple[int, int]:
    """(rank, world size) under torch.distributed, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Ranks:
    """This process's rank and collective answers (every rank must call them together)."""

    def __init__(self, device: torch.device) -> None:
        self.rank, self.size = world()
        self.device = device

    def gather(self, value: int) -> list[int]:
        """``value`` from every rank, in rank order."""
        if self.size == 1:
            return [value]
        t = torch.tensor([value], device=self.device)
        out = [torch.zeros_like(t) for _ in range(self.size)]
        dist.all_gather(out, t)
        return [int(v.item()) for v in out]

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank."""
        return any(self.gather(int(flag)))

    def broadcast(self, value: object) -> object:
        """Rank 0's ``value`` on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
