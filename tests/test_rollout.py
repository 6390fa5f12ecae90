"""predict_rollouts: shapes and units per model, steering energies, devices, bad input, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _traj_fixtures import small_dataset, trained

from trajebm.cli import main
from trajebm.data import TrajectoryDataset
from trajebm.engine.errors import UsageError
from trajebm.models import build_model, model_config
from trajebm.rollout import check_layout, goal_energy, predict_rollouts


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="module")
def test_split(root):
    ds = TrajectoryDataset(small_dataset(root), context=4, dtype="float32")
    return ds, *ds.trajectories("test")


@pytest.mark.parametrize("kind", ["ebm", "fc", "ensemble"])
def test_shapes_and_original_units(root, test_split, kind):
    ds, states, actions = test_split
    model = trained(root, kind)
    pred = predict_rollouts(model, states[:, :4], actions[:, 3:9], horizon=6, samples=3, seed=0)
    assert isinstance(pred, np.ndarray) and pred.shape == (len(states), 3, 6, 31)
    assert np.isfinite(pred).all()
    first_gap = np.abs(pred[:, :, 0] - states[:, None, 3]) / ds.state_stats.std
    assert np.median(first_gap) < 1.0  # one step moves little, in original units
    as_tensor = predict_rollouts(model, torch.from_numpy(states[:, :4]),
                                 torch.from_numpy(actions[:, 3:9]), samples=3, seed=0)
    assert torch.is_tensor(as_tensor)
    np.testing.assert_allclose(as_tensor.numpy(), pred, atol=1e-5)


def test_the_callers_model_is_left_as_it_was(root, test_split):
    _, states, actions = test_split
    for kind in ("ebm", "fc"):
        model = trained(root, kind).train()
        predict_rollouts(model, states[:, :4], actions[:, 3:5], samples=2, device="cpu")
        assert model.training and model.state_mean.device.type == "cpu"
        model.eval()
        predict_rollouts(model, states[:, :4], actions[:, 3:5], samples=2)
        assert not model.training


def test_units_round_trip_exactly():
    """A zero network predicts 'no change': the output equals the context in original units."""
    mean, std = np.linspace(-1, 1, 31), np.linspace(0.1, 2.0, 31)
    model = build_model(model_config("fc", hidden=8, layers=1), mean, std)
    torch.nn.init.zeros_(model.net[-1].weight)
    torch.nn.init.zeros_(model.net[-1].bias)
    context = np.random.default_rng(0).normal(3.0, 5.0, (2, 4, 31)).astype(np.float32)
    pred = predict_rollouts(model, context, np.zeros((2, 5, 20)), samples=2)
    np.testing.assert_allclose(pred, np.broadcast_to(context[:, None, None, 3], pred.shape),
                               rtol=1e-5, atol=1e-4)
    ebm = build_model(model_config("ebm", hidden=8, layers=1), mean, std)
    start = predict_rollouts(ebm, context, np.zeros((2, 1, 20)), samples=50, langevin_steps=0,
                             seed=0)[:, :, 0]
    gap = np.abs(start - context[:, None, 3]) / std
    assert gap.max() <= 0.3 + 1e-4 and gap.max() > 0.2  # U(-0.3, 0.3) in z units


def test_unconditional_ebm_samples_diverse_rollouts(root, test_split):
    _, states, _ = test_split
    model = trained(root, "ebm", conditional=False)
    pred = predict_rollouts(model, states[:1, :4], horizon=5, samples=8, seed=0)
    assert pred.shape == (1, 8, 5, 31) and pred[0, :, -1].std(0).mean() > 0


def test_goal_energy_steers_rollouts(root, test_split):
    ds, states, actions = test_split
    model = trained(root, "ebm")
    names = ds.state_names
    dims = [names.index("object:x"), names.index("object:y"), names.index("object:z")]
    goal = states[:, 3, dims] + 3.0 * ds.state_stats.std[dims]
    kwargs = dict(horizon=5, samples=4, seed=1)
    plain = predict_rollouts(model, states[:, :4], actions[:, 3:8], **kwargs)
    energy = goal_energy(np.repeat(goal, 4, 0), dims, weight=0.5, scale=ds.state_stats.std[dims])
    steered = predict_rollouts(model, states[:, :4], actions[:, 3:8], extra_energy=energy,
                               **kwargs)

    def distance(pred):
        return np.abs((pred[:, :, -1][..., dims] - goal[:, None]) / ds.state_stats.std[dims])

    assert distance(steered).mean() < 0.5 * distance(plain).mean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["ebm", "fc", "ensemble"])
def test_cuda_matches_shapes(root, test_split, kind):
    _, states, actions = test_split
    pred = predict_rollouts(trained(root, kind), states[:, :4], actions[:, 3:7], samples=2,
                            device="cuda", seed=0)
    assert pred.shape == (len(states), 2, 4, 31) and np.isfinite(pred).all()


def test_bad_inputs(root, test_split):
    ds, states, actions = test_split
    cond, uncond, fc = trained(root, "ebm"), trained(root, "ebm", False), trained(root, "fc")
    ctx, act = states[:, :4], actions[:, 3:8]
    cases = [
        (lambda: predict_rollouts(cond, ctx[:, :, :30], act), "state layouts differ"),
        (lambda: predict_rollouts(cond, ctx[:, :3], act), "needs k = 4"),
        (lambda: predict_rollouts(uncond, ctx, act, horizon=3), "takes no actions"),
        (lambda: predict_rollouts(cond, ctx, None, horizon=3), "give actions"),
        (lambda: predict_rollouts(cond, np.where(ctx > 0, np.nan, ctx), act), "NaN"),
        (lambda: predict_rollouts(cond, ctx, np.full_like(act, np.nan)), "NaN"),
        (lambda: predict_rollouts(cond, ctx, act, horizon=0), "horizon must be positive"),
        (lambda: predict_rollouts(uncond, ctx, horizon=-2), "horizon must be positive"),
        (lambda: predict_rollouts(cond, ctx, act, horizon=9), "needs 9 actions"),
        (lambda: predict_rollouts(cond, ctx, act, samples=0), "samples must be positive"),
        (lambda: predict_rollouts(fc, ctx, act, extra_energy=lambda s, t: s.sum(1)),
         "has no energy"),
        (lambda: check_layout(cond, ["a"] * 31), "different state layouts"),
    ]
    for call, message in cases:
        with pytest.raises(UsageError, match=message):
            call()


def test_rollout_cli(root, tmp_path, capsys):
    data, run = small_dataset(root), root / "runs" / "ebm-30"
    trained(root, "ebm")
    out = tmp_path / "pred.npz"
    status = main(["rollout", "--model", str(run), "--data", str(data), "--out", str(out),
                   "--horizon", "5", "--samples", "3", "--episodes", "2"])
    assert status == 0
    saved = np.load(out)
    assert saved["predicted"].shape == (2, 3, 5, 31) and saved["context"].shape == (2, 4, 31)
    assert str(saved["model_kind"]) == "ebm" and str(saved["dataset_id"])
    with pytest.warns(UserWarning, match="horizon 500 is longer than the data allows: "
                                         "predicting 13 steps"):
        status = main(["rollout", "--model", str(run), "--data", str(data), "--out", str(out),
                       "--horizon", "500", "--samples", "1", "--episodes", "1"])
    assert status == 0 and np.load(out)["predicted"].shape == (1, 1, 13, 31)
    other = trained(root, "ebm", False)
    assert other.config.conditional is False
    status = main(["rollout", "--model", str(tmp_path / "nothing"), "--data", str(data),
                   "--out", str(out)])
    assert status == 2 and "no such model" in capsys.readouterr().err


def test_train_cli_and_errors(root, tmp_path, capsys):
    data = small_dataset(root)
    status = main(["train", "--data", str(data), "--model", "fc:hidden=16", "--out",
                   str(tmp_path / "r"), "--steps", "3", "--batch-size", "32", "--quiet"])
    assert status == 0 and (tmp_path / "r" / "model.pt").is_file()
    status = main(["train", "--data", str(data), "--model", "ebm-paper:hidden=16", "--steps",
                   "2", "--out", str(tmp_path / "p"), "--quiet"])
    run = json.loads((tmp_path / "p" / "run.json").read_text())["config"]
    assert status == 0 and run["batch_size"] == 1024 and run["train"]["betas"] == [0.0, 0.999]
    assert run["model"]["delta_input"] is False and run["train"]["steps"] == 2
    status = main(["train", "--data", str(data), "--model", "ebm:warp=1", "--out",
                   str(tmp_path / "w"), "--quiet"])
    assert status == 2 and "unknown setting 'warp'" in capsys.readouterr().err
    status = main(["train", "--data", str(data), "--out", str(tmp_path / "r2"), "--steps", "2",
                   "--device", "tpu9", "--quiet"])
    assert status == 2 and "unknown device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        status = main(["train", "--data", str(data), "--out", str(tmp_path / "r3"),
                       "--steps", "2", "--device", "cuda", "--quiet"])
        assert status == 2 and "CUDA is not available" in capsys.readouterr().err
