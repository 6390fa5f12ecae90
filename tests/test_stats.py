"""Seed-level statistics: bootstrap intervals that cover the truth, probability of improvement."""

from __future__ import annotations

import numpy as np
import pytest

from trajebm.engine.metrics import frechet_distance_resampled, frechet_distance_samples
from trajebm.engine.stats import (
    median_interval,
    median_over_seeds,
    probability_of_improvement,
)


def test_median_interval_covers_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = []
    for rep in range(200):
        seed_effect = rng.normal(0.0, 0.5, size=(15, 1))
        values = 2.0 + seed_effect + rng.normal(0.0, 1.0, size=(15, 40))
        ci = median_interval(values, resamples=300, seed=rep)
        assert ci.low <= ci.value <= ci.high
        covered.append(ci.low <= 2.0 <= ci.high)
    assert 0.88 <= np.mean(covered) <= 0.995


def test_interval_widens_with_seed_spread():
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(5, 100))
    tight = median_interval(noise + rng.normal(0, 0.01, (5, 1)), seed=0)
    loose = median_interval(noise + rng.normal(0, 3.0, (5, 1)), seed=0)
    assert (loose.high - loose.low) > 3 * (tight.high - tight.low)


def test_recentred_fd_interval_contains_its_estimate():
    """FD on a resample with duplicate rows is biased upward; recentring keeps the estimate
    inside its own interval, while the plain percentile interval is centred above it."""
    rng = np.random.default_rng(2)
    runs = [(rng.normal(size=(60, 8)), rng.normal(0.3, 1.0, size=(60, 8))) for _ in range(3)]

    def stat(x, y):
        return lambda idx: frechet_distance_resampled(x, y, idx)

    stats = [stat(x, y) for x, y in runs]
    plain = median_over_seeds(stats, [60] * 3, resamples=200)
    fixed = median_over_seeds(stats, [60] * 3, resamples=200, recenter=True)
    assert (plain.low + plain.high) / 2 > plain.value + 0.3
    assert fixed.low <= fixed.value <= fixed.high
    assert abs((fixed.low + fixed.high) / 2 - fixed.value) < 0.3
    assert fixed.value == plain.value


def test_resampled_frechet_distance_equals_the_one_pair_version():
    rng = np.random.default_rng(3)
    x, y = rng.normal(3.0, 1.0, size=(2, 50, 6)), rng.normal(0.5, 2.0, size=(50, 6))
    idx = rng.integers(50, size=(4, 50))
    resampled = frechet_distance_resampled(x, y, idx)
    pairs = [[frechet_distance_samples(a[r], y[r]) for r in idx] for a in x]
    np.testing.assert_allclose(resampled, pairs, rtol=1e-9)
    np.testing.assert_allclose(frechet_distance_resampled(x[0], y, idx), pairs[0], rtol=1e-9)


def test_probability_of_improvement():
    better, worse = [1.0, 1.1, 0.9, 1.05, 0.95], [2.0, 2.2, 1.8, 2.1, 1.9]
    clear = probability_of_improvement(better, worse)
    assert clear.value == 1.0 and clear.low == 1.0
    assert probability_of_improvement(worse, better).value == 0.0
    same = probability_of_improvement(better, better)
    assert same.value == 0.5 and same.low < 0.5 < same.high
    higher = probability_of_improvement(worse, better, lower_is_better=False)
    assert higher.value == 1.0
    overlap = probability_of_improvement([1, 3], [2, 4])
    assert overlap.value == pytest.approx(0.75)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        median_interval(np.zeros(5))
    with pytest.raises(ValueError):
        median_over_seeds([], [])
    with pytest.raises(ValueError):
        probability_of_improvement([], [1.0])
