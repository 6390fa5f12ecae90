"""Trajectory models: training via the shared trainer / Adam, save -> load, bad model files."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from _traj_fixtures import small_dataset, tiny_fit, trained

from trajebm.data import TrajectoryDataset
from trajebm.engine.errors import UsageError
from trajebm.fit import collapse_message, fit_model, paper_fit_config, training_tensors
from trajebm.models import MODEL_KINDS, ModelConfig, build_model, load_model
from trajebm.rollout import predict_rollouts


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


def energy_gap(model, x, cond, seed=0):
    """E(perturbed) - E(true) per row, perturbed = the chains' start (s_t + U(-0.3, 0.3))."""
    noisy = model.init_chains(cond, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(noisy, cond) - model(x, cond)


def test_ebm_training_prefers_true_transitions(root):
    ds = TrajectoryDataset(small_dataset(root), context=4, dtype="float32")
    x, cond = training_tensors(ds, conditional=True)
    torch.manual_seed(0)
    fresh = build_model(ModelConfig(kind="ebm", hidden=32, layers=2, state_dim=31,
                                    action_dim=20))
    model = trained(root, "ebm", steps=120)
    before, after = energy_gap(fresh, x, cond), energy_gap(model, x, cond)
    assert float((before > 0).float().mean()) < 0.65
    assert float((after > 0).float().mean()) > 0.85
    assert float(after.mean()) > float(before.mean()) + 0.01
    run = root / "runs" / "ebm-120"
    assert {"model.pt", "checkpoint.pt", "metrics.csv", "run.json"} <= {
        p.name for p in run.iterdir()}
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert int(rows[-1]["step"]) == 120
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["model"]["kind"] == "ebm" and info["seed"] == 0


@pytest.mark.parametrize("kind", ["fc", "ensemble"])
def test_baselines_reduce_their_loss(root, kind):
    trained(root, kind, steps=60)
    rows = list(csv.DictReader(open(root / "runs" / f"{kind}-60" / "metrics.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_save_load_gives_identical_predictions(root, tmp_path, kind):
    model = fit_model(small_dataset(root), tmp_path / kind, tiny_fit(kind, steps=10))
    loaded = load_model(tmp_path / kind)
    ds = TrajectoryDataset(small_dataset(root), context=4, dtype="float32")
    states, actions = ds.trajectories("test")
    a = predict_rollouts(model, states[:, :4], actions[:, 3:8], samples=2, seed=7)
    b = predict_rollouts(loaded, states[:, :4], actions[:, 3:8], samples=2, seed=7)
    np.testing.assert_array_equal(a, b)
    assert loaded.meta["state_names"] == ds.metadata["trajebm"]["state_names"]
    assert loaded.meta["dataset_id"] == ds.metadata["dataset_id"]
    np.testing.assert_allclose(loaded.state_std.numpy(), ds.state_stats.std, rtol=1e-6)
    assert loaded.config == model.config


def test_resume_continues_a_baseline_run(root, tmp_path):
    data = small_dataset(root)
    cfg = tiny_fit("fc", steps=10)
    fit_model(data, tmp_path / "run", cfg)
    with pytest.raises(UsageError, match="already holds"):
        fit_model(data, tmp_path / "run", cfg)
    fit_model(data, tmp_path / "run", replace(cfg, steps=20), resume=True)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert int(rows[-1]["step"]) == 20


def test_bad_model_files(tmp_path):
    with pytest.raises(UsageError, match="no such model"):
        load_model(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="not a readable"):
        load_model(tmp_path)
    with pytest.raises(UsageError, match="unknown model"):
        ModelConfig(kind="gan")


def test_paper_config_trains_the_plain_concatenation(root, tmp_path):
    cfg = paper_fit_config(steps=3, warmup_steps=1, progress=False)
    assert cfg.batch_size == 1024 and cfg.betas == (0.0, 0.999)
    assert cfg.model.delta_input is False and cfg.model.sampler.steps == 20
    model = fit_model(small_dataset(root), tmp_path / "paper", cfg)
    assert load_model(tmp_path / "paper").config.delta_input is False
    x = torch.zeros(2, 31)
    cond = torch.randn(2, model.config.cond_dim)
    delta = build_model(replace(model.config, delta_input=True))
    delta.load_state_dict(model.state_dict())
    shifted = x + delta.last_state(cond)
    torch.testing.assert_close(delta(shifted, cond), model(x, cond))


def test_collapse_is_reported():
    assert collapse_message({"e_pos": -0.004, "e_neg": 0.002}) is None
    assert "collapsed" in collapse_message({"e_pos": -0.49, "e_neg": 0.5})


def test_kl_weight_reaches_the_trainer(root, tmp_path):
    cfg = replace(tiny_fit("ebm", steps=4), kl_weight=0.5)
    fit_model(small_dataset(root), tmp_path / "kl", cfg)
    rows = list(csv.DictReader(open(tmp_path / "kl" / "metrics.csv")))
    assert any(float(r["kl"]) != 0.0 for r in rows)
    info = json.loads((tmp_path / "kl" / "run.json").read_text())
    assert info["config"]["kl_weight"] == 0.5
