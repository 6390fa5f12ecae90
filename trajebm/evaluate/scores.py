"""Proper scores per test start, as pure maths on arrays (no files, no simulator).

FD compares the marginal over all starts at one step, so a forecast that collapses to one
future per start can match it; these scores judge each start's sampled futures X (S × D)
against its own true future y (D), in the same z units as the FD (training statistics):

* **energy score** ES = mean_s ||X_s − y|| − ½ mean_{s,s'} ||X_s − X_s'|| — the standard
  ("nrg") estimator, scoringrules' ``es_ensemble`` default; per report step and, as ``es``,
  averaged over every predicted step;
* **CRPS** per coordinate, the ES in one dimension (the same standard estimator, equal to
  scoringrules' ``crps_ensemble`` default ``qd``), averaged over coordinates;
* **coverage** of the central 50% and 90% intervals between the samples' empirical quantiles
  (numpy's linear interpolation), the share of true coordinates inside, over the trajectory;
* **spread–skill**: sqrt((S+1)/S · mean sample variance) / RMSE of the sample mean, over the
  trajectory — 1 when the truth is like one more sample, < 1 when over-confident.

A one-sample forecast (a deterministic model) is scored as such: ES is its Euclidean error,
CRPS its absolute error, and coverage and spread–skill are 0 (:data:`ONE_SAMPLE_NOTE`).
Lower ES and CRPS are better. Over starts the per-start scores are averaged (a mean of proper
scores is proper), and over seeds :mod:`trajebm.engine.stats` gives medians with intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trajebm.engine.stats import Statistic, median_interval, median_over_seeds

CALIBRATION_PERCENT = (10, 20, 30, 40, 50, 60, 70, 80, 90)
"""Nominal central-interval levels (%) of the calibration curve; coverage50/90 are two."""
COVERAGE_PERCENT = (50, 90)
"""The coverage levels reported in tables."""
ONE_SAMPLE_NOTE = ("one sample per start: the energy score is the mean error and the CRPS the "
                   "absolute error; coverage and spread are zero (not defined)")


def energy_score(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Energy score of samples (..., S, D) against the truth (..., D): one value per (...).

    The pair term is summed one sample at a time, so memory stays at the samples' size."""
    s = samples.shape[-2]
    skill = np.linalg.norm(samples - truth[..., None, :], axis=-1).mean(-1)
    pairs = sum(np.linalg.norm(samples - samples[..., i : i + 1, :], axis=-1).mean(-1)
                for i in range(s))
    return skill - 0.5 * pairs / s


def crps(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """CRPS per coordinate of samples (..., S, D) against the truth (..., D): (..., D).

    The pairwise term is taken from the sorted samples, sum_ij |x_i − x_j| =
    2 sum_i (2i − S − 1) x_(i), so it costs S log S, not S².
    """
    s = samples.shape[-2]
    skill = np.abs(samples - truth[..., None, :]).mean(-2)
    weights = (2 * np.arange(1, s + 1) - s - 1).reshape(-1, 1)
    return skill - (weights * np.sort(samples, axis=-2)).sum(-2) / s**2


def coverage(samples: np.ndarray, truth: np.ndarray, percent: Sequence[int]) -> np.ndarray:
    """Share of true coordinates inside each central ``percent`` interval of the samples,
    per leading index: samples (n, S, ...) and truth (n, ...) give (n, len(percent)).
    With one sample the interval is a point and the coverage 0."""
    if samples.shape[1] == 1:
        return np.zeros((len(samples), len(percent)))
    levels = np.asarray(percent) / 100.0
    q = np.quantile(samples, np.concatenate([(1 - levels) / 2, (1 + levels) / 2]), axis=1)
    lo, hi = q[: len(levels)], q[len(levels) :]
    inside = (lo <= truth) & (truth <= hi)
    return inside.reshape(len(levels), len(truth), -1).mean(-1).T


def _per_step(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ES and mean CRPS per start and step (n, H) of predictions (n, S, H, D)."""
    es = energy_score(np.moveaxis(pred, 1, 2), truth)
    per_coord = crps(np.moveaxis(pred, 1, -2), truth)
    return es, per_coord.mean(-1)


def start_scores(pred: np.ndarray, truth: np.ndarray, groups: dict[str, np.ndarray],
                 steps: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-start scores (n,) of z-scored predictions (n, S, H, D) against the truth (n, H, D):
    ``es@t``, ``es``, ``crps@t``, ``crps``, ``coverage50``, ``coverage90`` and the spread and
    error terms of the spread–skill ratio, per group (keys of the hand and object prefixed
    ``"hand "`` / ``"object "``), and the state's ``calibration`` (n, levels)."""
    out: dict[str, np.ndarray] = {}
    for g, dims in groups.items():
        p, y, prefix = pred[..., dims], truth[..., dims], "" if g == "state" else f"{g} "
        es, cr = _per_step(p, y)
        for t in steps:
            out[f"{prefix}es@{t}"], out[f"{prefix}crps@{t}"] = es[:, t - 1], cr[:, t - 1]
        out[f"{prefix}es"], out[f"{prefix}crps"] = es.mean(1), cr.mean(1)
        cover = coverage(p, y, CALIBRATION_PERCENT)
        for c in COVERAGE_PERCENT:
            out[f"{prefix}coverage{c}"] = cover[:, CALIBRATION_PERCENT.index(c)]
        if g == "state":
            out["calibration"] = cover
        var = p.var(1, ddof=1) if p.shape[1] > 1 else np.zeros_like(y)
        out[f"{prefix}spread2"] = var.reshape(len(y), -1).mean(1)
        out[f"{prefix}error2"] = ((p.mean(1) - y) ** 2).reshape(len(y), -1).mean(1)
    return out


def spread_skill(spread2: np.ndarray, error2: np.ndarray, samples: int) -> np.ndarray:
    """sqrt((S+1)/S · mean variance) / RMSE of the sample mean, the means over the last axis
    (starts) of per-start variances and squared errors; 0 for S = 1."""
    return np.sqrt((samples + 1) / samples * spread2.mean(-1) / error2.mean(-1))


def _ratio_stat(spread2: np.ndarray, error2: np.ndarray, samples: int) -> Statistic:
    """The spread–skill ratio on resampled starts: indices (B, n) -> (B,)."""
    return lambda idx: spread_skill(spread2[idx], error2[idx], samples)


def score_summary(runs: Sequence[dict[str, np.ndarray]], samples: int, *,
                  resamples: int = 1000) -> dict[str, Any]:
    """Medians over runs (seeds) of the start-averaged scores of :func:`start_scores`, with
    seeds-then-starts bootstrap intervals and each run's value (``per_seed``); the
    spread–skill ratio per group; the calibration curve; a note for one-sample forecasts."""
    summary: dict[str, Any] = {}
    for key in runs[0]:
        if key == "calibration" or key.endswith(("spread2", "error2")):
            continue
        values = np.stack([r[key] for r in runs])
        summary[key] = median_interval(values, resamples=resamples).as_dict()
        summary[key]["per_seed"] = values.mean(1).tolist()
    for key in (k for k in runs[0] if k.endswith("spread2")):
        prefix = key[: -len("spread2")]
        stats = [_ratio_stat(r[key], r[f"{prefix}error2"], samples) for r in runs]
        summary[f"{prefix}spread_skill"] = median_over_seeds(
            stats, [len(r[key]) for r in runs], resamples=resamples).as_dict()
    curve = np.median([r["calibration"].mean(0) for r in runs], axis=0)
    summary["calibration"] = {"nominal": [p / 100 for p in CALIBRATION_PERCENT],
                              "observed": curve.tolist()}
    summary["samples"] = samples
    summary["note"] = ONE_SAMPLE_NOTE if samples == 1 else None
    return summary
