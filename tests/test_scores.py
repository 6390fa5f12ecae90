"""Proper scores per start: the energy score and CRPS against scoringrules and the Gaussian
closed form, coverage and spread–skill of calibrated and over-confident forecasts, one-sample
forecasts, and the new keys of `evaluate` and `compare`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scoringrules as sr
from _traj_fixtures import small_dataset, trained
from scipy.stats import norm

from trajebm.cli import main
from trajebm.evaluate import (
    ONE_SAMPLE_NOTE,
    EvalConfig,
    coverage,
    crps,
    energy_score,
    evaluate,
    score_summary,
    scores_markdown,
    spread_skill,
    start_scores,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


def test_energy_score_and_crps_match_scoringrules():
    rng = np.random.default_rng(0)
    samples, truth = rng.normal(size=(6, 5, 9, 4)), rng.normal(size=(6, 5, 4))
    np.testing.assert_allclose(energy_score(samples, truth),
                               sr.es_ensemble(truth, samples, backend="numpy"), atol=1e-6)
    # scoringrules puts the ensemble on the last axis for the CRPS
    reference = sr.crps_ensemble(truth, np.moveaxis(samples, -2, -1), backend="numpy")
    np.testing.assert_allclose(crps(samples, truth), reference, atol=1e-6)


def test_crps_approaches_the_gaussian_closed_form():
    rng = np.random.default_rng(1)
    mu, sigma, y, s = 0.3, 1.7, np.array([-1.0, 0.2, 2.5]), 4000
    z = (y - mu) / sigma
    exact = sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))
    estimate = crps(rng.normal(mu, sigma, size=(s, 3)), y)
    # the standard estimator's bias is sigma / (sqrt(pi) S) (the pair term), its noise
    # ~ sigma / sqrt(S): 5 standard errors of 4000 samples
    assert np.abs(estimate - exact).max() < 5 * sigma / np.sqrt(s)


def test_samples_from_the_truth_are_calibrated_and_narrow_ones_are_not():
    rng = np.random.default_rng(2)
    n, s, h, d = 200, 64, 2, 5
    truth = rng.normal(size=(n, h, d))
    good = rng.normal(size=(n, s, h, d))
    narrow = 0.3 * rng.normal(size=(n, s, h, d))
    groups = {"state": np.arange(d)}
    for pred, calibrated in ((good, True), (narrow, False)):
        scores = start_scores(pred, truth, groups, [1, 2])
        cover50, cover90 = scores["coverage50"].mean(), scores["coverage90"].mean()
        ratio = spread_skill(scores["spread2"], scores["error2"], s)
        if calibrated:  # 2000 coordinates per level; the empirical quantiles of 64 samples
            assert abs(cover50 - 0.5) < 0.05 and abs(cover90 - 0.9) < 0.04
            assert abs(ratio - 1) < 0.1
        else:
            assert cover50 < 0.3 and cover90 < 0.5 and ratio < 0.5
    assert (start_scores(good, truth, groups, [2])["es"].mean()
            < start_scores(narrow, truth, groups, [2])["es"].mean())


def test_coverage_levels_and_one_sample_forecasts():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(4, 3, 2))
    one = truth[:, None] + rng.normal(size=(4, 1, 3, 2))
    np.testing.assert_allclose(energy_score(one[:, :, 0], truth[:, 0]),
                               np.linalg.norm(one[:, 0, 0] - truth[:, 0], axis=-1))
    np.testing.assert_allclose(crps(one[:, :, 0], truth[:, 0]),
                               np.abs(one[:, 0, 0] - truth[:, 0]))
    assert not coverage(one, truth, [50, 90]).any()
    scores = start_scores(one, truth, {"state": np.arange(2)}, [1, 3])
    summary = score_summary([scores], 1, resamples=20)
    assert summary["spread_skill"]["value"] == 0 and summary["coverage90"]["value"] == 0
    assert summary["note"] == ONE_SAMPLE_NOTE
    assert ONE_SAMPLE_NOTE in scores_markdown({"fc": summary})
    wide = rng.normal(size=(4, 50, 3, 2)) * 100
    assert coverage(wide, truth, [10, 90]).min() > 0


def test_summary_gives_intervals_per_seed_values_and_calibration():
    rng = np.random.default_rng(4)
    groups = {"state": np.arange(4), "hand": np.arange(2), "object": np.arange(2, 4)}
    runs = [start_scores(rng.normal(size=(10, 8, 6, 4)), rng.normal(size=(10, 6, 4)), groups,
                         [3, 6]) for _ in range(3)]
    summary = score_summary(runs, 8, resamples=50)
    for key in ("es@3", "es@6", "es", "crps@6", "coverage50", "spread_skill", "hand es",
                "object coverage90", "object spread_skill"):
        assert summary[key]["low"] <= summary[key]["value"] <= summary[key]["high"], key
    assert len(summary["es"]["per_seed"]) == 3 and summary["note"] is None
    assert len(summary["calibration"]["observed"]) == len(summary["calibration"]["nominal"])


def test_evaluate_writes_the_scores(root, tmp_path, capsys):
    data = small_dataset(root)
    trained(root, "fc")
    trained(root, "ensemble")
    runs = [root / "runs" / n for n in ("fc-30", "ensemble-30")]
    cfg = EvalConfig(horizon=6, samples=3, physics_episodes=1, render=False, progress=False)
    evaluate(data, runs, tmp_path / "rep", cfg)
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    for name, entry in saved["models"].items():
        scores = entry["scores"]
        for key in ("es@6", "es", "crps@6", "coverage50", "coverage90", "spread_skill",
                    "hand es@6", "object es"):
            assert np.isfinite(scores[key]["value"]), (name, key)
        assert (scores["note"] is not None) == (name == "fc")
    assert saved["models"]["fc"]["scores"]["coverage50"]["value"] == 0
    assert (tmp_path / "rep" / "calibration.png").stat().st_size > 0
    assert main(["evaluate", "--data", str(data), "--models", str(runs[0]), "--out",
                 str(tmp_path / "cli"), "--horizon", "4", "--no-render", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Proper scores per start" in out and ONE_SAMPLE_NOTE in out


def test_compare_writes_the_scores(root, tmp_path):
    out = tmp_path / "cmp"
    status = main(["compare", "--data", str(small_dataset(root)), "--out", str(out),
                   "--models", "fc", "ensemble", "--seeds", "2", "--horizon", "4",
                   "--samples", "3", "--resamples", "30", "--quiet", "--base",
                   "steps=4,hidden=16,layers=1,members=2,batch_size=32,warmup_steps=1,"
                   "validate_every=0,test_fraction=0.2"])
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    for spec, entry in summary["variants"].items():
        scores = entry["scores"]
        for key in ("es@4", "es", "coverage50", "coverage90", "spread_skill"):
            assert scores[key]["low"] <= scores[key]["value"] <= scores[key]["high"]
        assert len(scores["es"]["per_seed"]) == 2
        assert (scores["samples"], scores["note"] is None) == ((1, False) if spec == "fc"
                                                               else (3, True))
    poi = summary["score_poi"]
    assert set(poi) == {"es@4", "es"}
    assert poi["es"]["fc"]["ensemble"]["value"] + poi["es"]["ensemble"]["fc"]["value"] == 1
    table = (out / "scores.md").read_text()
    assert "Proper scores per start" in table and "energy score es" in table
    assert ONE_SAMPLE_NOTE in table
    assert (out / "calibration.png").stat().st_size > 0
