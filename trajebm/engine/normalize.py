"""Z-scoring, written once: the statistics, their floor, and the map to and from z units.

Datasets compute their statistics with it and models carry them (as buffers) and apply them
with it; both arrays and tensors go through the same formulas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RELATIVE_FLOOR = 0.01
"""A dimension's std is raised to at least this times the median std of all dimensions."""
ABSOLUTE_FLOOR = 1e-6
"""... and to at least this."""


@dataclass(frozen=True)
class NormStats:
    """Per-dimension mean and standard deviation, floored so near-constant dims stay tame.

    A dimension that barely moves in the data (a locked joint, a resting object) would be
    blown up by z-scoring until numerical noise dominates every distance and gradient. Its std
    is raised to ``RELATIVE_FLOOR`` times the median std of all dimensions; ``floored`` lists
    the dimensions that hit the floor. ``mean`` and ``std`` may be arrays or tensors; the maps
    work on whatever they can broadcast with.
    """

    mean: Any
    std: Any
    floored: tuple[int, ...] = ()

    def normalize(self, x: Any) -> Any:
        """Original units to z units."""
        return (x - self.mean) / self.std

    def denormalize(self, z: Any) -> Any:
        """z units to original units."""
        return z * self.std + self.mean

    @classmethod
    def of(cls, x: np.ndarray, dtype: str | np.dtype = "float64") -> NormStats:
        """Statistics of the rows of ``x``, computed in float64 and stored as ``dtype``."""
        x = x.reshape(-1, x.shape[-1]).astype(np.float64)
        return cls._with_floor(x.mean(axis=0), x.std(axis=0), dtype)

    @classmethod
    def of_moments(cls, moments: tuple[int, np.ndarray, np.ndarray],
                   dtype: str | np.dtype = "float64") -> NormStats:
        """Statistics from (count, mean, centred sum of squares) per dimension."""
        count, mean, m2 = moments
        return cls._with_floor(mean, np.sqrt(m2 / count), dtype)

    @classmethod
    def _with_floor(cls, mean: np.ndarray, std: np.ndarray, dtype: str | np.dtype) -> NormStats:
        """Mean and std as ``dtype``, the std raised to the floor (class docstring)."""
        floor = max(RELATIVE_FLOOR * float(np.median(std)), ABSOLUTE_FLOOR)
        floored = tuple(int(i) for i in np.flatnonzero(std < floor))
        return cls(mean.astype(dtype), np.maximum(std, floor).astype(dtype), floored)
