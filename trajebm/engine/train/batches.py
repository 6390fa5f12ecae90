"""Batches for the trainer: endless, shuffled, resumable through their state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

Batch = tuple[Tensor, "Tensor | None"]
"""Positives and their conditions (None for an unconditional model)."""


class TensorBatches:
    """Endless shuffled mini-batches ``(x, cond)`` over tensors, resumable through its state.

    ``transform`` maps each batch of ``x`` on the way out (e.g. uint8 images to floats), so a
    large dataset can stay compact in memory.
    """

    def __init__(self, x: Tensor, cond: Tensor | None = None, batch_size: int = 128,
                 seed: int = 0, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        if cond is not None and len(cond) != len(x):
            raise ValueError(f"x has {len(x)} rows but cond has {len(cond)}")
        if not 1 <= batch_size:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.cond, self.batch_size = x, cond, min(batch_size, len(x))
        self.transform = transform
        self.generator = torch.Generator()
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Start a fresh order from ``seed`` (the trainer passes ``config.seed + rank``)."""
        self.generator.manual_seed(seed)
        self.perm = torch.randperm(len(self.x), generator=self.generator)
        self.pos = 0

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.pos + self.batch_size > len(self.perm):
            self.perm = torch.randperm(len(self.x), generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        x = self.x[idx] if self.transform is None else self.transform(self.x[idx])
        return x, None if self.cond is None else self.cond[idx]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"], int(state["pos"])
