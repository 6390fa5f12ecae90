"""Evaluation: FD per step and its floor, physics-consistency error, the report and plots,
a horizon longer than the data and other bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from _traj_fixtures import small_dataset, tiny_fit, trained

from trajebm.cli import main
from trajebm.data import TrajectoryDataset
from trajebm.data.collection import CollectConfig, collect
from trajebm.data.policies import PolicyConfig
from trajebm.engine.errors import UsageError
from trajebm.evaluate import (
    EvalConfig,
    evaluate,
    fd_per_step,
    load_test_set,
    markdown_table,
    physics_checker,
    physics_error,
    predict_test,
)
from trajebm.fit import fit_model
from trajebm.rollout import usable_horizon


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


def test_fd_per_step_grows_with_a_shift():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(200, 3, 4))
    pred = truth[:, None] + np.array([0.0, 1.0, 2.0])[None, None, :, None]
    fd = fd_per_step(pred, truth)
    np.testing.assert_allclose(fd, [0.0, 4.0, 16.0], atol=1e-6)


def test_physics_error_is_small_for_true_transitions(root):
    ds = TrajectoryDataset(small_dataset(root), context=4)
    states, actions = ds.trajectories("train")
    with physics_checker(ds.info) as checker:
        s, a, nxt = states[:4, 1:9], actions[:4, 1:9], states[:4, 2:10]
        true_err = physics_error(checker, s, a, nxt, ds.state_stats.std)
        wrong = physics_error(checker, s, a, states[:4, 6:14], ds.state_stats.std)
        shuffled = physics_error(checker, s, a[::-1], nxt, ds.state_stats.std)
    assert true_err < 0.5 * wrong and true_err < shuffled
    with physics_checker(ds.info, needed=False) as none:
        assert none is None


def test_evaluate_writes_metrics_and_plots(root, tmp_path):
    data = small_dataset(root)
    for kind, cond in (("ebm", True), ("fc", True), ("ensemble", True), ("ebm", False)):
        trained(root, kind, cond)
    runs = [root / "runs" / n for n in ("ebm-30", "fc-30", "ensemble-30", "ebm-uncond-30")]
    cfg = EvalConfig(horizon=8, samples=3, physics_episodes=2, physics_every=3, render=False,
                     progress=False)
    report = evaluate(data, runs, tmp_path / "rep", cfg)
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert saved["horizon"] == 8 and len(saved["fd_floor"]) == 8
    assert set(saved["models"]) == {"ebm", "fc", "ensemble", "ebm-uncond"}
    for name, entry in saved["models"].items():
        assert len(entry["fd"]) == 8 and len(entry["mse"]) == 8
        assert np.isfinite(entry["fd"]).all()
        assert set(entry["fd_groups"]) == {"state", "hand", "object"}
        assert (entry["physics_error"] is None) == (name == "ebm-uncond")
        assert entry["samples"] == (1 if name == "fc" else 3)  # copies are not samples
    assert saved["physics_error_truth"] >= 0
    assert (tmp_path / "rep" / "fd.png").stat().st_size > 0
    assert (tmp_path / "rep" / "coordinates.png").stat().st_size > 0
    table = markdown_table(report["summary"])
    assert table.count("\n") == 6 and "train vs test" in table and "object fd@8" in table
    assert saved["split"] == {"seed": 0, "test_fraction": 0.1}
    assert "FDs are biased" in saved["fd_warning"]  # 2 test trajectories in 31 dims


def test_models_are_scored_on_the_split_they_were_trained_on(root, tmp_path):
    data = small_dataset(root)
    cfg = tiny_fit("fc", steps=3)
    fit_model(data, tmp_path / "s3", replace(cfg, split_seed=3, test_fraction=0.25))
    ecfg = EvalConfig(horizon=4, samples=2, physics_episodes=1, render=False, plots=False,
                      progress=False)
    with pytest.warns(UserWarning, match="biased"):
        report = evaluate(data, [tmp_path / "s3"], tmp_path / "rep", ecfg)
    own = TrajectoryDataset(data, context=4, test_fraction=0.25, seed=3)
    assert report["split"] == {"seed": 3, "test_fraction": 0.25}
    assert report["test_episodes"] == len(own.split_ids["test"]) == 6
    assert not set(own.split_ids["test"]) & set(own.split_ids["train"])
    trained(root, "fc")
    with pytest.raises(UsageError, match="different splits"):
        evaluate(data, [tmp_path / "s3", root / "runs" / "fc-30"], tmp_path / "r2", ecfg)


def test_datasets_with_velocities_are_scored_and_rendered(root, tmp_path):
    data = tmp_path / "vel"
    collect(CollectConfig(episodes=10, length=10, include_velocities=True, seed=1,
                          policy=PolicyConfig("scripted")), data, workers=1, progress=False)
    fit_model(data, tmp_path / "fc", replace(tiny_fit("fc", steps=3), test_fraction=0.2))
    ecfg = EvalConfig(horizon=4, samples=1, physics_episodes=2, progress=False)
    with pytest.warns(UserWarning, match="biased"):
        report = evaluate(data, [tmp_path / "fc"], tmp_path / "rep", ecfg)
    entry = report["models"]["fc"]
    assert report["physics_error_truth"] < entry["physics_error"] < np.inf
    assert report["frames"] is None and (tmp_path / "rep" / "frames.png").is_file()


def test_evaluate_cli_and_bad_input(root, tmp_path, capsys):
    data = small_dataset(root)
    trained(root, "fc")
    status = main(["evaluate", "--data", str(data), "--models", str(root / "runs" / "fc-30"),
                   "--out", str(tmp_path / "r"), "--horizon", "4", "--samples", "2",
                   "--no-render", "--quiet"])
    assert status == 0 and "fd@10" in capsys.readouterr().out
    with pytest.raises(UsageError, match="at least one model"):
        evaluate(data, [], tmp_path / "x")
    with pytest.raises(UsageError, match="horizon and samples"):
        evaluate(data, [root / "runs" / "fc-30"], tmp_path / "x", EvalConfig(horizon=0))


def test_a_horizon_longer_than_the_data_is_cut_with_a_warning(root, tmp_path):
    data = small_dataset(root)  # 16 steps: 13 predictable after 4 context states
    model = trained(root, "fc")
    test = load_test_set(data, model.split, 4)
    with pytest.warns(UserWarning, match="predicting 13 steps"):
        assert usable_horizon(500, test.states.shape[1], 4) == 13
    with pytest.warns(UserWarning, match="13 steps"):
        pred = predict_test(model, test, EvalConfig(horizon=500, progress=False))
    assert pred.shape[2] == 13
    ecfg = EvalConfig(horizon=500, samples=2, physics_episodes=1, render=False, plots=False,
                      progress=False)
    with pytest.warns(UserWarning, match="13 steps"):
        report = evaluate(data, [root / "runs" / "fc-30"], tmp_path / "rep", ecfg)
    assert report["horizon"] == 13 and len(report["models"]["fc"]["fd"]) == 13


def test_bad_evaluate_arguments_exit_2_with_one_line(root, tmp_path, capsys):
    data = small_dataset(root)
    trained(root, "fc")
    run = str(root / "runs" / "fc-30")
    for argv, message in (
            (["--data", str(tmp_path / "none"), "--models", run], "does not exist"),
            (["--data", str(data), "--models", str(tmp_path / "none")], "no such model"),
            (["--data", str(data), "--models", run, "--samples", "0"], "must be positive")):
        status = main(["evaluate", *argv, "--out", str(tmp_path / "r"), "--quiet"])
        err = capsys.readouterr().err
        assert status == 2 and message in err and err.count("\n") == 1, err
