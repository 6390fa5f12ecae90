"""Procedural dSprites: white shapes on black rendered on the fly from dSprites' factors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from imagebm.datasets.factors import (
    FACTOR_GRID,
    SHAPES,
    Combination,
    FactorBins,
    check_factors,
    factor_labels,
    kept,
)
from imagebm.datasets.specs import SPLITS, ImageData, image_data
from trajebm.engine.errors import UsageError

PROCEDURAL_DEFAULT_N = 10_000
_SPRITE_RADIUS = 0.14
_SPRITE_MARGIN = 0.2
_SPRITE_REACH = 0.2


def render_sprites(shape: np.ndarray, scale: np.ndarray, orientation: np.ndarray,
                   x: np.ndarray, y: np.ndarray, image_size: int = 64,
                   supersample: int = 4) -> torch.Tensor:
    """dSprites-style white shapes on black, uint8 (N, 1, S, S), antialiased by supersampling.

    ``shape`` indexes :data:`SHAPES`; ``scale`` multiplies the base size (half-width 0.14 of
    the image at scale 1); ``orientation`` rotates by that many radians; ``x`` and ``y`` in
    [0, 1] place the centre between 0.2 and 0.8 of the width (``y`` grows downwards). This
    follows dSprites' factors, not its exact pixels. Only a window around each sprite is
    evaluated, one shape at a time, so 10,000 16x16 sprites take about a second.
    """
    cols = [torch.as_tensor(np.asarray(a, np.float32)).reshape(-1)
            for a in (shape, scale, orientation, x, y)]
    n = len(cols[0])
    if any(len(c) != n for c in cols):
        raise UsageError("shape, scale, orientation, x and y must have the same length")
    if image_size < 1 or supersample < 1:
        raise UsageError("image_size and supersample must be positive")
    s, ss = image_size, supersample
    w = min(s, math.ceil(2 * _SPRITE_REACH * s) + 2)
    offsets = (torch.arange(w * ss, dtype=torch.float32) + 0.5) / (s * ss)
    steps = torch.arange(w)
    out = torch.zeros((n, s, s), dtype=torch.uint8)
    chunk = max(1, 2**21 // (w * ss) ** 2)
    kinds, scales, thetas = cols[0].round().long(), cols[1], cols[2]
    centres = [_SPRITE_MARGIN + (1 - 2 * _SPRITE_MARGIN) * c for c in cols[3:]]
    for kind in range(len(SHAPES)):
        members = torch.nonzero(kinds == kind).flatten()
        for start in range(0, len(members), chunk):
            i = members[start:start + chunk]
            cx, cy = centres[0][i], centres[1][i]
            c0 = ((cx - _SPRITE_REACH) * s).floor().long().clamp(0, s - w)
            r0 = ((cy - _SPRITE_REACH) * s).floor().long().clamp(0, s - w)
            dx = (c0[:, None] / s + offsets - cx[:, None])[:, None, :]
            dy = (r0[:, None] / s + offsets - cy[:, None])[:, :, None]
            theta, r = thetas[i, None, None], _SPRITE_RADIUS * scales[i, None, None]
            cos, sin = torch.cos(theta), torch.sin(theta)
            inside = _inside(kind, (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r)
            cover = inside.float().view(-1, w, ss, w, ss).mean((2, 4))
            rows = (r0[:, None] + steps)[:, :, None]
            columns = (c0[:, None] + steps)[:, None, :]
            out[i[:, None, None], rows, columns] = cover.mul_(255).round_().to(torch.uint8)
    return out[:, None]


def _inside(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether points (u, v), in units of the sprite's half-width, lie inside shape ``kind``."""
    if kind == 0:
        return torch.maximum(u.abs(), v.abs()) <= 1
    if kind == 1:
        return u * u + 4 * v * v <= 1
    hx2, hy = (1.2 * u).square(), 0.1 - 1.2 * v
    t = hx2 + hy * hy - 1
    return t * t * t <= hx2 * hy * hy * hy


def procedural_dsprites(n: int = PROCEDURAL_DEFAULT_N, image_size: int = 64, seed: int = 0,
                        split: str = "train", label_factor: str | None = None,
                        factor_bins: FactorBins | None = None,
                        hold_out: Sequence[Combination] = ()) -> ImageData:
    """``n`` sprites with factors drawn uniformly from dSprites' grid (seeded; split-specific).

    Sprites matching a ``hold_out`` combination are dropped after drawing, so fewer than
    ``n`` remain; the others are the same sprites as without the hold-out.
    """
    check_factors(label_factor, factor_bins, hold_out)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    indices = {f: rng.integers(len(grid), size=n) for f, grid in FACTOR_GRID.items()}
    keep = kept(indices, factor_bins, hold_out)
    if keep is not None:
        indices = {f: v[keep] for f, v in indices.items()}
    factors = {f: (indices[f] if f == "shape" else FACTOR_GRID[f][indices[f]])
               for f in FACTOR_GRID}
    images = render_sprites(*(factors[f] for f in FACTOR_GRID), image_size=image_size)
    labels, names = factor_labels(label_factor, indices, factor_bins)
    return image_data("dsprites-procedural", images, labels, names, factors)
