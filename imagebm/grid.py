"""Image grids for looking at samples: (N, C, H, W) images tiled into PNGs and GIF frames.

Shared by training (``buffer.png``) and sampling (``samples.png``, ``chain.gif``); files are
encoded in memory and renamed into place, so an interrupted write never replaces a good one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import atomic_write_bytes


def tile(images: Tensor | np.ndarray, nrow: int | None = None, scale: int = 0) -> np.ndarray:
    """Images (N, 1|3, H, W) in [0, 1] as one uint8 (H, W, 3) grid with 1-pixel gaps.

    ``scale`` repeats pixels so tiny images (8x8 digits) stay visible; 0 picks it so the grid
    is at least ~512 pixels wide.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise UsageError(f"images must be (N, 1|3, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    scale = scale or max(1, 512 // (nrow * (w + 1)))
    x = x.clamp(0, 1).expand(n, 3, h, w)
    grid = torch.ones(3, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i]
    grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(images: Tensor | np.ndarray, path: str | os.PathLike, nrow: int | None = None,
              scale: int = 0) -> np.ndarray:
    """Write :func:`tile` of ``images`` to the PNG ``path`` atomically; return the grid."""
    grid = tile(images, nrow, scale)
    atomic_write_bytes(path, iio.imwrite("<bytes>", grid, extension=".png"))
    return grid


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike,
             frame_ms: int = 200) -> Path:
    """Write grids from :func:`tile` as a looping GIF to ``path`` atomically."""
    data = iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=frame_ms, loop=0)
    atomic_write_bytes(path, data)
    return Path(path)
