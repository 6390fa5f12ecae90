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
from trajebm.fit import FitConfig, TrajectoryBatches, collapse_message, fit_model
from trajebm.modelio import load_model
from trajebm.models import MODEL_KINDS, build_model, model_config
from trajebm.rollout import predict_rollouts
from trajebm.variants import VARIANTS, paper_settings, variant_config


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


def energy_gap(model, x, cond, seed=0):
    """E(perturbed) - E(true) per row, perturbed = the chains' start (s_t + U(-0.3, 0.3))."""
    noisy = model.init_chains(cond, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(noisy, cond) - model(x, cond)


def all_windows(ds, model):
    """Every training window's (next states, condition) tensors for ``model``."""
    batches = TrajectoryBatches(ds, 1, model=model)
    return batches.tensors(batches.starts)


def test_ebm_training_prefers_true_transitions(root):
    ds = TrajectoryDataset(small_dataset(root), context=4, dtype="float32")
    torch.manual_seed(0)
    fresh = build_model(model_config("ebm", hidden=32, layers=2, state_dim=31,
                                    action_dim=20))
    x, cond = all_windows(ds, fresh)
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
    cfg = tiny_fit(kind, steps=10)
    model = fit_model(small_dataset(root), tmp_path / kind, cfg)
    loaded = load_model(tmp_path / kind)
    ds = TrajectoryDataset(small_dataset(root), context=4, dtype="float32",
                           val_fraction=cfg.val_fraction)
    states, actions = ds.trajectories("test")
    a = predict_rollouts(model, states[:, :4], actions[:, 3:8], samples=2, seed=7)
    b = predict_rollouts(loaded, states[:, :4], actions[:, 3:8], samples=2, seed=7)
    np.testing.assert_array_equal(a, b)
    assert loaded.meta["state_names"] == ds.state_names
    assert loaded.meta["dataset_id"] == ds.info.dataset_id
    np.testing.assert_allclose(loaded.state_std.numpy(), ds.state_stats.std, rtol=1e-6)
    assert loaded.config == model.config


def test_resume_continues_a_baseline_run(root, tmp_path):
    data = small_dataset(root)
    cfg = tiny_fit("fc", steps=10)
    fit_model(data, tmp_path / "run", cfg)
    with pytest.raises(UsageError, match="already holds"):
        fit_model(data, tmp_path / "run", cfg)
    fit_model(data, tmp_path / "run", replace(cfg, train=replace(cfg.train, steps=20)),
              resume=True)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert int(rows[-1]["step"]) == 20


def test_bad_model_files(tmp_path):
    with pytest.raises(UsageError, match="no such model"):
        load_model(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="not a readable"):
        load_model(tmp_path)
    with pytest.raises(UsageError, match="unknown model kind"):
        model_config("gan")


def test_paper_config_trains_the_plain_concatenation(root, tmp_path):
    cfg = paper_settings(FitConfig(train=tiny_fit("ebm", steps=3).train))
    assert cfg.batch_size == 1024 and cfg.train.betas == (0.0, 0.999)
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


def test_kl_term_changes_the_update(root, tmp_path):
    """The KL term reaches the trainer: same seed and data, different weights after training."""
    base = tiny_fit("ebm", steps=4)
    contrastive = replace(base.model.contrastive, kl_weight=0.5)
    with_kl = replace(base, model=replace(base.model, contrastive=contrastive))
    a = fit_model(small_dataset(root), tmp_path / "plain", base)
    b = fit_model(small_dataset(root), tmp_path / "kl", with_kl)
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                        b.state_dict().values(), strict=True))
    info = json.loads((tmp_path / "kl" / "run.json").read_text())
    assert info["config"]["model"]["contrastive"]["kl_weight"] == 0.5


DAD = "rollout_fraction=0.5,rollout_horizon=3,rollout_every=4,rollout_start=2"
SPECS = ["ebm:context_noise=0.1", f"ebm:{DAD}", "ebm:segment=3", "fc-paper", f"fc:{DAD}",
         "ensemble:context_noise=0.1", "ebm:ema_decay=0.9", "ebm-uncond:segment=2",
         "ebm-dsm:noise_levels=3", "ebm-dsm-uncond:level_steps=1", "ensemble-uncond",
         "ebm:collapse_gap=0.5,replay_prob=0.5", "ebm-proposal"]


TINY = {"hidden": 32, "layers": 2, "members": 2, "sampler_steps": 20, "steps": 8,
        "warmup_steps": 5, "checkpoint_every": 1000, "log_every": 10, "progress": False,
        "validate_every": 0, "batch_size": 64}


@pytest.mark.parametrize("spec", SPECS)
def test_training_options_train_save_and_load(root, tmp_path, spec):
    cfg = variant_config(spec, TINY)
    model = fit_model(small_dataset(root), tmp_path / "run", cfg)
    loaded = load_model(tmp_path / "run")
    assert loaded.config == model.config
    ds = TrajectoryDataset(small_dataset(root), context=4, dtype="float32")
    states, actions = ds.trajectories("test")
    acts = actions[:, 3:10] if model.config.conditional else None
    a = predict_rollouts(model, states[:, :4], acts, horizon=7, samples=2, seed=3)
    b = predict_rollouts(loaded, states[:, :4], acts, horizon=7, samples=2, seed=3)
    assert a.shape == (len(states), 2, 7, 31) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    info = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert info["context_noise"] == cfg.context_noise
    assert info["rollout_fraction"] == cfg.rollout_fraction


@pytest.mark.parametrize("name", VARIANTS.names())
def test_every_variant_resumes_exactly(root, tmp_path, name):
    """Stopped after 3 steps and resumed to 6, a run ends with the unbroken run's weights."""
    tiny = {**TINY, "checkpoint_every": 3}
    unbroken = fit_model(small_dataset(root), tmp_path / "a", variant_config(f"{name}:steps=6",
                                                                              tiny))
    fit_model(small_dataset(root), tmp_path / "b", variant_config(f"{name}:steps=3", tiny))
    resumed = fit_model(small_dataset(root), tmp_path / "b",
                        variant_config(f"{name}:steps=6", tiny), resume=True)
    for a, b in zip(unbroken.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_context_noise_perturbs_the_context_only(root):
    ds = TrajectoryDataset(small_dataset(root), context=4, dtype="float32")
    model = build_model(model_config("fc", hidden=8, layers=1))
    _, cond = all_windows(ds, model)
    clean = TrajectoryBatches(ds, 64, seed=1, model=model)
    noisy = TrajectoryBatches(ds, 64, seed=1, model=model, context_noise=0.2)
    (x0, c0), (x1, c1) = next(clean), next(noisy)
    torch.testing.assert_close(x0, x1)
    gap = c1 - c0
    assert gap[:, :4 * 31].std().item() == pytest.approx(0.2, rel=0.1)
    assert torch.equal(gap[:, 4 * 31:], torch.zeros_like(gap[:, 4 * 31:]))
    assert torch.equal(cond, all_windows(ds, model)[1])  # data untouched


def test_own_rollout_windows_pair_predicted_contexts_with_true_next_states(root):
    """A zero residual fc predicts 'no change', so each rollout context ends in the last true
    state it saw, and every target is the true state that follows."""
    ds = TrajectoryDataset(small_dataset(root), context=4, dtype="float32")
    states = torch.from_numpy(ds.trajectories("train", normalized=True)[0])
    model = build_model(model_config("fc", hidden=8, layers=1))
    torch.nn.init.zeros_(model.net[-1].weight)
    torch.nn.init.zeros_(model.net[-1].bias)
    batches = TrajectoryBatches(ds, 12, seed=0, model=model, rollout_fraction=1.0,
                                rollout_horizon=3)
    nxt, ctx = next(batches)
    flat = states.reshape(-1, 31)
    for target, row in zip(nxt, ctx, strict=True):
        last = row[3 * 31 : 4 * 31]
        t = int(torch.nonzero((flat == target).all(1))[0])
        assert any(torch.equal(last, flat[t - j]) for j in (2, 3, 4))
    state = batches.state_dict()
    again = TrajectoryBatches(ds, 12, seed=5, model=model, rollout_fraction=1.0,
                              rollout_horizon=3)
    again.load_state_dict(state)
    for a, b in zip(next(batches), next(again), strict=True):
        torch.testing.assert_close(a, b)


def test_score_matching_ebm_learns_a_known_conditional_gaussian():
    """Denoising score matching + annealed Langevin recover x ~ N(2c, 0.3^2) given c."""
    torch.manual_seed(0)
    cfg = model_config("dsm", state_dim=1, action_dim=1, context=1, hidden=64, layers=2,
                       delta_input=False, sigma_max=2.0, sigma_min=0.05, noise_levels=8,
                       level_steps=5)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(1500):
        c = torch.randn(256, 2)
        x = 2 * c[:, :1] + 0.3 * torch.randn(256, 1)
        opt.zero_grad()
        model.loss(x, c).backward()
        opt.step()
    c = torch.tensor([[1.0, 0.0]]).repeat(4000, 1)
    samples = model.propose(c)[:, 0]
    assert abs(samples.mean().item() - 2.0) < 0.1
    assert abs(samples.std().item() - 0.3) < 0.06


def test_segment_model_scores_whole_segments(root):
    ds = TrajectoryDataset(small_dataset(root), context=4, dtype="float32")
    model = build_model(model_config("ebm", segment=3, hidden=8, layers=1))
    x, cond = all_windows(ds, model)
    assert x.shape[1] == 3 * 31 and cond.shape[1] == 4 * 31 + 3 * 20
    assert model(x[:5], cond[:5]).shape == (5,)
    assert model.propose(cond[:5], steps=2).shape == (5, 3 * 31)
