"""The replay buffer of persistent Langevin chains, shared by trajectory and image models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

NoiseInit = Callable[[int, "Tensor | None", torch.Generator], Tensor]
"""``init(n, cond, generator) -> (n, *sample_shape)``: fresh chain starts (cond may be None)."""


def uniform_init(low: float = 0.0, high: float = 1.0, shape: tuple[int, ...] = ()) -> NoiseInit:
    """Fresh starts drawn from U(low, high) with the given sample shape (images: U(0, 1))."""

    def init(n: int, cond: Tensor | None, generator: torch.Generator) -> Tensor:
        return low + (high - low) * torch.rand((n, *shape), generator=generator)

    return init


@dataclass
class BufferSample:
    """Chain starts: samples, their conditions (None if unconditional) and which were replayed."""

    x: Tensor
    cond: Tensor | None
    replayed: Tensor


class ReplayBuffer:
    """A ring buffer of past negative samples (and their conditions) for persistent chains.

    With ``dtype=torch.uint8`` samples in [0, 1] are stored as 8-bit bins ``floor(256 x)`` and
    de-quantised as ``(bin + U(0, 1)) / 256`` when read, as in the paper's image code. Starts
    are drawn from the buffer with probability ``replay_prob`` per row once it holds more than
    a batch; the rest come from ``init``. All randomness uses the buffer's own generator, saved
    in its state (the Trainer reseeds it with ``config.seed + rank``, so ranks differ). Float
    storage returns samples in its own dtype; uint8 storage returns float32.

    ``device`` (or :meth:`to`; the Trainer moves it to the training device) is where samples
    and conditions are stored and returned, so a GPU run has no host round trip per step. The
    random choices still come from the CPU generator (small index and mask tensors go to the
    device), so a buffer draws the same samples on every device, and its :meth:`state_dict`
    holds CPU tensors that load into a buffer on any device.
    """

    def __init__(
        self,
        capacity: int,
        sample_shape: tuple[int, ...],
        init: NoiseInit,
        *,
        cond_shape: tuple[int, ...] | None = None,
        cond_dtype: torch.dtype = torch.float32,
        dtype: torch.dtype = torch.float32,
        replay_prob: float = 0.95,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not 0.0 <= replay_prob <= 1.0:
            raise ValueError(f"replay_prob must be in [0, 1], got {replay_prob}")
        if dtype not in (torch.float32, torch.float64, torch.uint8):
            raise ValueError(f"dtype must be float32, float64 or uint8, got {dtype}")
        self.capacity, self.init, self.replay_prob = capacity, init, replay_prob
        self.sample_shape = tuple(sample_shape)
        self.device = torch.device(device)
        self.data = torch.zeros((capacity, *self.sample_shape), dtype=dtype, device=self.device)
        self.cond = None if cond_shape is None else torch.zeros(
            (capacity, *cond_shape), dtype=cond_dtype, device=self.device)
        self.size = 0
        self.pos = 0
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def to(self, device: str | torch.device) -> ReplayBuffer:
        """Move the stored samples and conditions to ``device`` (in place); returns self."""
        self.device = torch.device(device)
        self.data = self.data.to(self.device)
        if self.cond is not None:
            self.cond = self.cond.to(self.device)
        return self

    def _encode(self, x: Tensor) -> Tensor:
        x = x.detach().to(self.device)
        if self.data.dtype == torch.uint8:
            return (x * 256).floor().clamp(0, 255).to(torch.uint8)
        return x.to(self.data.dtype)

    @property
    def sample_dtype(self) -> torch.dtype:
        """The float dtype samples come back in: float32 for uint8 storage, else the stored one."""
        return torch.float32 if self.data.dtype == torch.uint8 else self.data.dtype

    def _decode(self, stored: Tensor) -> Tensor:
        if self.data.dtype == torch.uint8:
            u = torch.rand(stored.shape, generator=self.generator).to(stored.device)
            return (stored.float() + u) / 256.0
        return stored.clone()

    def push(self, x: Tensor, cond: Tensor | None = None) -> None:
        """Add a batch of samples (and their conditions), overwriting the oldest when full."""
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"samples must have shape (N, *{self.sample_shape}), got {tuple(x.shape)}")
        if (cond is None) != (self.cond is None):
            raise ValueError("pass cond exactly when the buffer was built with cond_shape")
        if cond is not None:
            self._check_cond(cond, len(x))
        x = x[-self.capacity:]
        n = x.shape[0]
        idx = (self.pos + torch.arange(n, device=self.device)) % self.capacity
        self.data[idx] = self._encode(x)
        if self.cond is not None:
            self.cond[idx] = cond[-self.capacity:].detach().to(self.device, self.cond.dtype)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, cond: Tensor | None = None) -> BufferSample:
        """``n`` chain starts on the buffer's device: replayed rows carry their stored condition,
        fresh rows ``cond``'s. ``replayed`` (which rows came from the buffer) stays on the CPU."""
        cond = None if cond is None else cond.detach().to(self.device)
        fresh = self.init(n, cond, self.generator)
        fresh = fresh.to(self.device, self.sample_dtype)
        out_cond = None if cond is None else cond.clone()
        if self.size <= n or self.replay_prob == 0.0:
            return BufferSample(fresh, out_cond, torch.zeros(n, dtype=torch.bool))
        replayed = torch.rand(n, generator=self.generator) < self.replay_prob
        idx = torch.randint(self.size, (int(replayed.sum()),), generator=self.generator)
        rows, idx = replayed.to(self.device), idx.to(self.device)
        fresh[rows] = self._decode(self.data[idx])
        if self.cond is not None:
            if out_cond is None:
                out_cond = torch.zeros((n, *self.cond.shape[1:]), dtype=self.cond.dtype,
                                       device=self.device)
            out_cond[rows] = self.cond[idx]
        return BufferSample(fresh, out_cond, replayed)

    def state_dict(self) -> dict[str, Any]:
        """The buffer's contents and generator as CPU tensors (loadable on any device)."""
        return {
            "data": self.data[: self.size].cpu().clone(),
            "cond": None if self.cond is None else self.cond[: self.size].cpu().clone(),
            "size": self.size,
            "pos": self.pos,
            "capacity": self.capacity,
            "replay_prob": self.replay_prob,
            "generator": self.generator.get_state(),
        }

    def _check_cond(self, cond: Tensor, rows: int, what: str = "cond") -> None:
        shape = tuple(self.cond.shape[1:])
        if len(cond) != rows or tuple(cond.shape[1:]) != shape:
            raise ValueError(f"{what} must have shape ({rows}, *{shape}) to match the samples, "
                             f"got {tuple(cond.shape)}")
        if not torch.can_cast(cond.dtype, self.cond.dtype):
            raise ValueError(f"{what} has dtype {cond.dtype}, which does not cast safely to the "
                             f"buffer's {self.cond.dtype}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; ValueError unless it fits this buffer exactly."""
        data, cond = state["data"], state["cond"]
        size, pos = int(state["size"]), int(state["pos"])
        if state["capacity"] != self.capacity or tuple(data.shape[1:]) != self.sample_shape:
            raise ValueError("buffer state does not match this buffer's capacity or sample shape")
        if data.dtype != self.data.dtype:
            raise ValueError(f"buffer state has dtype {data.dtype}, expected {self.data.dtype}")
        if not (0 <= size <= self.capacity and len(data) == size and 0 <= pos < self.capacity
                and (size == self.capacity or pos == size)):
            raise ValueError(f"buffer state is inconsistent: size {size}, position {pos}, "
                             f"{len(data)} rows, capacity {self.capacity}")
        if (cond is None) != (self.cond is None):
            raise ValueError("buffer state and this buffer disagree on storing conditions")
        if cond is not None:
            self._check_cond(cond, size, "buffer state cond")
            if cond.dtype != self.cond.dtype:
                raise ValueError(f"buffer state cond has dtype {cond.dtype}, "
                                 f"expected {self.cond.dtype}")
        if not 0.0 <= float(state["replay_prob"]) <= 1.0:
            raise ValueError(f"buffer state replay_prob {state['replay_prob']} is not in [0, 1]")
        self.size, self.pos = size, pos
        self.replay_prob = float(state["replay_prob"])
        self.data[:size] = data
        if self.cond is not None:
            self.cond[:size] = cond
        self.generator.set_state(state["generator"])
