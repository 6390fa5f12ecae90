"""Honest comparisons across seeds: medians with hierarchical bootstrap intervals, and the
probability of improvement (Agarwal et al., NeurIPS 2021, "Deep RL at the edge of the
statistical precipice"; the estimators of their rliable package, written for our shapes).

A result here is a set of runs (seeds), each scored on the same units (e.g. test starts).
Intervals resample both levels — seeds with replacement, then units within each drawn seed —
so they include the spread between seeds and the sampling noise of a finite test set. A
statistic that is biased by duplicate units (a Fréchet distance fitted to a resample with
repeated rows is biased upward) can ask for ``recenter``: the bootstrap draws are shifted so
their median is the estimate, and the interval shows the spread, not the resampling bias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]
"""Scores one run on resamples of its units: unit indices (B, n) -> one value per row (B,)."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.nanpercentile(draws, [tail, 100.0 - tail])
    return float(low), float(high)


def median_over_seeds(stat: Sequence[Statistic], units: Sequence[int], *,
                      resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                      recenter: bool = False) -> Interval:
    """Median over runs of ``stat[r]``, with a seeds-then-units bootstrap interval.

    ``stat[r]`` scores run ``r`` on rows of unit indices (all of them for the point estimate);
    ``units[r]`` is how many units run ``r`` has. Each bootstrap replicate draws the runs with
    replacement and, for every draw, its own resample of that run's units.
    """
    if len(stat) != len(units) or not stat:
        raise ValueError("need one statistic and one unit count per run, at least one run")
    runs = len(stat)
    value = float(np.median([s(np.arange(n)[None])[0] for s, n in zip(stat, units,
                                                                      strict=True)]))
    rng = np.random.default_rng(seed)
    picks = rng.integers(runs, size=(resamples, runs))
    scores = np.empty((resamples, runs))
    for r in range(runs):
        rows, cols = np.nonzero(picks == r)
        if len(rows):
            scores[rows, cols] = stat[r](rng.integers(units[r], size=(len(rows), units[r])))
    draws = np.median(scores, axis=1)
    if recenter:
        draws += value - np.nanmedian(draws)
    return Interval(value, *_percentiles(draws, confidence))


def median_interval(values: np.ndarray, *, resamples: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> Interval:
    """Median over the rows of ``values`` (runs × units): each run scored by its unit mean.

    The common case of :func:`median_over_seeds` for per-unit metrics that average (MSE,
    physics error); vectorised.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or not values.size:
        raise ValueError(f"need a (runs, units) array, got shape {values.shape}")
    runs, units = values.shape
    value = float(np.median(values.mean(1)))
    rng = np.random.default_rng(seed)
    pick_runs = rng.integers(runs, size=(resamples, runs))
    pick_units = rng.integers(units, size=(resamples, runs, units))
    draws = np.median(values[pick_runs[..., None], pick_units].mean(-1), axis=1)
    return Interval(value, *_percentiles(draws, confidence))


def probability_of_improvement(a: Sequence[float], b: Sequence[float], *,
                               lower_is_better: bool = True, resamples: int = 1000,
                               confidence: float = 0.95, seed: int = 0) -> Interval:
    """P(a run of A beats a run of B): the share of (A run, B run) pairs where A is better,
    ties counting half, with a bootstrap interval over both sets of runs (rliable's estimator
    for one task). 0.5 means no difference; >= 0.75 is a robust improvement.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not len(a) or not len(b):
        raise ValueError("need at least one run of each")
    if not lower_is_better:
        a, b = -a, -b

    def score(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        diff = x[..., :, None] - y[..., None, :]
        return ((diff < 0) + 0.5 * (diff == 0)).mean(axis=(-2, -1))

    rng = np.random.default_rng(seed)
    draws = score(a[rng.integers(len(a), size=(resamples, len(a)))],
                  b[rng.integers(len(b), size=(resamples, len(b)))])
    return Interval(float(score(a, b)), *_percentiles(draws, confidence))
