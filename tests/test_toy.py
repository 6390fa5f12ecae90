"""The toy job: every density, mode coverage with defaults, log Z by grid and AIS, the CLI."""

import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from trajebm.cli import main
from trajebm.toy import (
    DENSITIES,
    ToyConfig,
    ToyResult,
    Trained,
    energy_grid,
    fit_toy,
    grid_log_z,
    grid_samples,
    mode_coverage,
    sample_density,
    score_samples,
    toy_likelihood,
)


@pytest.mark.parametrize("name", sorted(DENSITIES))
def test_densities_are_finite_2d_and_seeded(name):
    x = sample_density(name, 500, seed=1)
    assert x.shape == (500, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.array_equal(x, sample_density(name, 500, seed=1))
    assert not np.array_equal(x, sample_density(name, 500, seed=2))


def test_mode_coverage_flags_a_collapsed_sampler():
    data = sample_density("8gaussians", 4000)
    assert mode_coverage(data)["all_modes_covered"]
    collapsed = data[np.linalg.norm(data - data[0], axis=1) < 1.0]
    assert not mode_coverage(collapsed)["all_modes_covered"]


def test_a_short_fit_covers_every_mode_of_8gaussians(tmp_path):
    # the default model, data and sampler; 1,000 steps at lr 5e-3 instead of 5,000 at 2e-3
    data = sample_density("8gaussians", 24000, seed=0)
    defaults = ToyConfig()
    config = ToyConfig(num_samples=2000, train=replace(defaults.train, steps=1000, lr=5e-3,
                                                       progress=False))
    result = fit_toy(data[4000:], data[:4000], tmp_path, config)
    modes = mode_coverage(result.samples)
    assert len(result.samples) >= 2000
    assert all(0.05 <= w <= 0.20 for w in modes["mode_weights"]), modes
    assert modes["outlier_fraction"] < 0.10, modes
    assert result.metrics["energy_distance"] < result.metrics["energy_distance_gaussian_fit"]


class Quadratic(torch.nn.Module):
    """E(z) = |z - c|² / 2: log Z = (D/2) log 2π on all of R^D."""

    def __init__(self, center):
        super().__init__()
        self.center = torch.as_tensor(center, dtype=torch.float32)

    def forward(self, z, cond=None):
        return 0.5 * (z - self.center).pow(2).sum(1)


def test_score_flags_samples_that_the_energy_separates_from_the_data():
    # the separating optimum: samples 8 units off the data's mode, 32 nats above it
    rng = np.random.default_rng(0)
    data = rng.standard_normal((1000, 2)).astype(np.float32)
    trained = Trained(Quadratic([0.0, 0.0]), torch.zeros(10, 2), {"step": 1, "rollbacks": 0}, 0.0)
    cfg = ToyConfig(num_samples=500)
    mean, std = np.zeros(2), np.ones(2)
    for shift, collapsed in ((0.0, False), (8.0, True)):
        z = torch.as_tensor(rng.standard_normal((500, 2)) + shift, dtype=torch.float32)
        metrics = score_samples(trained, z, data, data[:500], mean, std, cfg)
        assert metrics["collapsed"] is collapsed, metrics["energy_gap"]


def test_grid_integrates_and_samples_a_known_density():
    grid, err = grid_log_z(Quadratic([0.5, -0.5]), -6.0, 6.0, 2, points=256)
    assert abs(grid.log_z - math.log(2 * math.pi)) < 1e-4 and err < 1e-4
    samples = grid_samples(energy_grid(Quadratic([0.5, -0.5]), -6.0, 6.0, 2, 256), 4000)
    assert torch.allclose(samples.mean(0), torch.tensor([0.5, -0.5]), atol=0.06)
    assert torch.allclose(samples.std(0), torch.ones(2), atol=0.05)


def test_toy_likelihood_agrees_with_the_grid_and_the_truth():
    # a standard normal energy on standardised data: exact log Z = log 2π (the box holds it all)
    rng = np.random.default_rng(0)
    train, test = rng.standard_normal((4000, 2)) * [2.0, 0.5], rng.standard_normal((500, 2))
    mean, std = train.mean(0), train.std(0)
    result = ToyResult(train[:10], Quadratic([0.0, 0.0]), mean, std, {})
    cfg = ToyConfig(ais_chains=200, ais_steps=100, grid_points=256)
    out = toy_likelihood(result, train, test * [2.0, 0.5], cfg)
    grid, est = out["grid"], out["ais"]
    assert abs(grid["log_z"] - math.log(2 * math.pi)) < 1e-3 and grid["edge_mass"] < 1e-3
    assert est["abs_error"] < 0.05 and est["bounds_bracket_grid"], est
    assert est["upper_from"] == "target_samples"
    z = (test * [2.0, 0.5] - mean) / std
    expected = -np.mean(0.5 * (z**2).sum(1)) - math.log(2 * math.pi) - np.log(std).sum()
    assert out["test_log_likelihood"] == pytest.approx(expected, abs=1e-3)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "trajebm.cli", *args], capture_output=True,
                          text=True)


def test_cli_fits_an_nxd_array_in_original_units(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((600, 3)) * [1.0, 10.0, 0.1] + [0.0, 100.0, -5.0])
    np.save(tmp_path / "x.npy", data.astype(np.float32))
    out = tmp_path / "run"
    code = main(["toy", "--data", str(tmp_path / "x.npy"), "--out", str(out), "--steps", "150",
                 "--ais-steps", "20", "--no-progress"])
    assert code == 0
    samples = np.load(out / "samples.npy")
    assert samples.shape[1] == 3 and len(samples) >= 2000
    assert np.allclose(samples.mean(0), [0.0, 100.0, -5.0], atol=[1.0, 10.0, 0.1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"energy_distance", "energy_distance_gaussian_fit"} <= set(metrics)
    likelihood = metrics["likelihood"]  # 3-D: AIS only, no grid
    assert "grid" not in likelihood and likelihood["ais"]["upper_from"] == "forward_resampled"
    assert likelihood["test_log_likelihood_log_z_from"] == "ais"
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 0 and run["versions"]["torch"] and "config" in run
    assert (out / "toy.png").stat().st_size > 0 and (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("make, message", [
    (None, "no such file"),
    (lambda p: np.save(p, np.array(["a", "b"] * 100)), "expected a float array"),
    (lambda p: np.save(p, np.zeros((200, 2, 2))), "expected an N×D array"),
    (lambda p: np.save(p, np.vstack([np.zeros((199, 2)), [[np.nan, 0.0]]])), "NaN or inf"),
    (lambda p: np.save(p, np.zeros((50, 2))), "at least 100 rows"),
    (lambda p: p.write_text("not numpy"), "not a readable .npy"),
])
def test_cli_rejects_bad_input_with_one_line_and_status_2(tmp_path, make, message):
    path = tmp_path / "x.npy"
    if make is not None:
        make(path)
    result = run_cli("toy", "--data", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_refuses_to_overwrite_a_nonempty_output(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    result = run_cli("toy", "--density", "moons", "--out", str(tmp_path))
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "precious"
