"""dSprites' factors: their grids, labels by one factor or a joint combination, bins that
coarsen a factor, and combinations held out of the data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral

import numpy as np

from trajebm.engine.errors import UsageError

SHAPES = ("square", "ellipse", "heart")
FACTOR_GRID: dict[str, np.ndarray] = {
    "shape": np.arange(3),
    "scale": np.linspace(0.5, 1.0, 6),
    "orientation": np.linspace(0.0, 2 * np.pi, 40),
    "x": np.linspace(0.0, 1.0, 32),
    "y": np.linspace(0.0, 1.0, 32),
}


FactorBins = Mapping[str, int]
"""Bins per dSprites factor (factors not named keep their full grid)."""
Combination = Mapping[str, int]
"""A value (bin index) per dSprites factor, e.g. ``{"shape": 2, "x": 0}``."""


def label_parts(label_factor: str) -> tuple[str, ...]:
    """The factors of a label spec: ``"shape"`` -> ("shape",), ``"shape+x"`` -> both."""
    parts = tuple(label_factor.split("+"))
    if any(f not in FACTOR_GRID for f in parts) or len(set(parts)) != len(parts):
        raise UsageError(f"unknown label_factor {label_factor!r}; choose from "
                         f"{', '.join(FACTOR_GRID)}, or distinct ones joined by '+'")
    return parts


def factor_classes(factor: str, bins: FactorBins | None = None) -> int:
    """How many values ``factor`` takes: its bins, else its grid size."""
    return (bins or {}).get(factor, len(FACTOR_GRID[factor]))


def factor_bin(factor: str, grid_index: np.ndarray, bins: FactorBins | None = None
               ) -> np.ndarray:
    """Grid indices of ``factor`` -> bin indices (contiguous equal groups of the grid)."""
    return np.asarray(grid_index) * factor_classes(factor, bins) // len(FACTOR_GRID[factor])


def factor_names(factor: str, bins: FactorBins | None = None) -> list[str]:
    """A name per value of ``factor``: the shape, the grid value, or a bin's value range."""
    grid = FACTOR_GRID[factor]
    values = list(SHAPES) if factor == "shape" else [f"{v:.3g}" for v in grid]
    groups: list[list[str]] = [[] for _ in range(factor_classes(factor, bins))]
    for i, value in enumerate(values):
        groups[int(factor_bin(factor, i, bins))].append(value)
    if factor == "shape":
        return ["|".join(g) for g in groups]
    return [g[0] if len(g) == 1 else f"{g[0]}-{g[-1]}" for g in groups]


def combination_index(combination: Combination, factors: Sequence[str],
                      bins: FactorBins | None = None) -> int:
    """The joint label of ``combination`` for the label spec ``"+".join(factors)``."""
    return int(_joint(combination, factors, bins))


def _joint(values: Mapping[str, int | np.ndarray], factors: Sequence[str],
           bins: FactorBins | None) -> np.ndarray:
    """Mixed-radix joint index of per-factor values (the first factor varies slowest)."""
    index = np.zeros((), np.int64)
    for f in factors:
        index = index * factor_classes(f, bins) + np.asarray(values[f], np.int64)
    return index


def check_factors(label_factor: str | None, bins: FactorBins | None,
                  hold_out: Sequence[Combination]) -> None:
    """UsageError unless the label spec, bins and held-out combinations are consistent."""
    if label_factor is not None:
        label_parts(label_factor)
    for f, k in (bins or {}).items():
        if f not in FACTOR_GRID or isinstance(k, bool) or not isinstance(k, Integral) \
                or not 1 <= k <= len(FACTOR_GRID[f]):
            raise UsageError(f"factor_bins: {f!r} must be a factor of {', '.join(FACTOR_GRID)} "
                             f"with 1 to its grid size bins, got {k!r}")
    for combo in hold_out:
        if not isinstance(combo, Mapping) or not combo:
            raise UsageError(f"hold_out entries are non-empty mappings factor -> value, got "
                             f"{combo!r}")
        for f, v in combo.items():
            if f not in FACTOR_GRID or isinstance(v, bool) or not isinstance(v, Integral) \
                    or not 0 <= v < factor_classes(f, bins):
                raise UsageError(f"hold_out {dict(combo)}: {f!r} must be a factor of "
                                 f"{', '.join(FACTOR_GRID)} with a value below its bins")


def factor_labels(spec: str | None, indices: dict[str, np.ndarray],
                   bins: FactorBins | None = None
                   ) -> tuple[np.ndarray | None, list[str] | None]:
    """Labels (bin indices, or joint indices) and class names for ``label_factor``."""
    if spec is None:
        return None, None
    factors = label_parts(spec)
    values = {f: factor_bin(f, indices[f], bins) for f in factors}
    labels = _joint(values, factors, bins)
    names = [""]
    for f in factors:
        names = [f"{a}/{b}" if a else b for a in names for b in factor_names(f, bins)]
    return labels, names


def kept(indices: dict[str, np.ndarray], bins: FactorBins | None,
          hold_out: Sequence[Combination]) -> np.ndarray | None:
    """Which items no held-out combination matches (None when nothing is held out)."""
    if not hold_out:
        return None
    n = len(next(iter(indices.values())))
    held = np.zeros(n, bool)
    for combo in hold_out:
        match = np.ones(n, bool)
        for f, v in combo.items():
            match &= factor_bin(f, indices[f], bins) == int(v)
        held |= match
    return ~held
