"""Files written by an earlier trajebm still load, and the same settings give the same numbers.

``tests/fixtures/legacy`` was written by trajebm at commit cc441ea (before the restructuring of
issue 20; how is described in its README): a hand dataset, trajectory models of every kind, a
trainer checkpoint, an image run, and what they produced then — per-step training losses,
rollouts, evaluation and comparison scores, Langevin chains, toy and image results. These
tests rerun the same settings with the current code and compare.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from trajebm.engine.sampling import LangevinConfig, langevin
from trajebm.engine.settings import parse_spec
from trajebm.engine.train import ContrastiveConfig
from trajebm.fit import fit_model
from trajebm.modelio import load_model
from trajebm.rollout import predict_rollouts
from trajebm.variants import variant_config

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
GOLDEN = json.loads((LEGACY / "golden.json").read_text())
TOL = {"rtol": 1e-4, "atol": 1e-5}


def losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def hand(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the legacy dataset (its read cache is built beside it)."""
    out = tmp_path_factory.mktemp("legacy") / "hand"
    shutil.copytree(LEGACY / "hand", out)
    return out


@pytest.fixture(scope="module")
def runs(hand: Path) -> Path:
    """Every legacy spec trained again on the legacy dataset."""
    root = hand.parent / "runs"
    for spec, full in GOLDEN["specs"].items():
        fit_model(hand, root / spec.replace(":", "_").replace("=", "-"), variant_config(full))
    return root


@pytest.mark.parametrize("spec", list(GOLDEN["specs"]))
def test_training_gives_the_same_losses(runs: Path, spec: str) -> None:
    run = runs / spec.replace(":", "_").replace("=", "-")
    np.testing.assert_allclose(losses(run), GOLDEN["train"][spec], **TOL)


def test_saved_models_load_and_roll_out_as_before() -> None:
    reference = np.load(LEGACY / "rollouts.npz")
    models = sorted((LEGACY / "models").glob("*.pt"))
    assert len(models) == len(GOLDEN["specs"])
    for path in models:
        model = load_model(path)
        actions = reference["actions"] if model.config.conditional else None
        pred = predict_rollouts(model, reference["context"], actions, horizon=8, samples=2,
                                seed=0)
        np.testing.assert_allclose(pred, reference[path.stem], **TOL, err_msg=path.stem)


def test_checkpoint_resumes_as_before(hand: Path, tmp_path: Path) -> None:
    spec = GOLDEN["resume"]["spec"].replace("steps=4", "steps=8")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(LEGACY / "checkpoint" / "checkpoint.pt", run / "checkpoint.pt")
    fit_model(hand, run, variant_config(spec), resume=True)
    np.testing.assert_allclose(losses(run), GOLDEN["resume"]["losses"], **TOL)


def test_evaluation_and_comparison_score_as_before(hand: Path, runs: Path,
                                                   tmp_path: Path) -> None:
    from trajebm.compare import CompareConfig, compare
    from trajebm.evaluate import EvalConfig, evaluate

    ecfg = EvalConfig(horizon=8, samples=2, plots=False, render=False, progress=False,
                      physics_episodes=2)
    report = evaluate(hand, [runs / "ebm", runs / "fc", runs / "ensemble"], tmp_path / "eval",
                      ecfg)
    for got, want in zip(report["summary"], GOLDEN["evaluate"]["summary"], strict=True):
        for key, value in want.items():
            if isinstance(value, float):
                np.testing.assert_allclose(got[key], value, **TOL, err_msg=key)
            else:
                assert got[key] == value
    ccfg = CompareConfig(seeds=2, base=parse_spec(GOLDEN["specs"]["fc"])[1], resamples=50,
                         band_resamples=20, eval=ecfg)
    summary = compare(hand, ["fc", "ebm"], tmp_path / "compare", ccfg)
    for spec, entries in GOLDEN["compare"].items():
        for key, want in entries.items():
            got = summary["variants"][spec][key]
            for part in ("value", "low", "high"):
                np.testing.assert_allclose(got[part], want[part], **TOL, err_msg=f"{spec} {key}")


def test_langevin_chains_as_before() -> None:
    reference = np.load(LEGACY / "sampler.npz")
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    net.load_state_dict(torch.load(LEGACY / "sampler_net.pt", weights_only=True))
    x0, mask = torch.from_numpy(reference["x0"]), torch.from_numpy(reference["mask"])
    configs = {
        "paper": LangevinConfig(steps=7, step_size=0.5, noise=0.05),
        "paper_annealed_mask": LangevinConfig(steps=7, step_size=0.5, noise=0.05,
                                              step_size_end=0.05, anneal_power=2.0),
        "textbook": LangevinConfig(steps=7, step_size=0.01, convention="textbook",
                                   temperature=0.5, grad_clip=0.5, clip_mode="norm"),
    }
    for name, cfg in configs.items():
        torch.manual_seed(1)
        m = mask if "mask" in name else None
        x = langevin(lambda x, c: net(x).squeeze(-1), x0, None, cfg, mask=m)
        np.testing.assert_allclose(x.numpy(), reference[name], **TOL, err_msg=name)


def test_toy_as_before(tmp_path: Path) -> None:
    from trajebm.toy import ToyConfig, run_toy

    cfg = ToyConfig(seed=0, num_train=512, num_test=128, num_samples=64, ais_steps=0,
                    contrastive=ContrastiveConfig(alpha=0.03, buffer_size=256), grid_points=64)
    cfg.train = replace(cfg.train, steps=8, log_every=1, progress=False)
    metrics = run_toy(tmp_path / "toy", "8gaussians", None, cfg)
    want = GOLDEN["toy"]
    np.testing.assert_allclose(losses(tmp_path / "toy"), want["losses"], **TOL)
    np.testing.assert_allclose(metrics["energy_distance"], want["energy_distance"], **TOL)
    np.testing.assert_allclose(metrics["likelihood"]["grid"]["log_z"], want["log_z"], **TOL)


def test_image_run_loads_samples_and_trains_as_before(tmp_path: Path) -> None:
    from imagebm.sample import SampleConfig, sample_images
    from imagebm.train import load_image_run, preset, train_images

    reference = np.load(LEGACY / "image_samples.npz")
    run = load_image_run(LEGACY / "digits")
    images, labels, _ = sample_images(run, SampleConfig(num=6, chunks=2, chunk_steps=3, seed=0),
                                      progress=False)
    np.testing.assert_allclose(images.numpy(), reference["images"], **TOL)
    np.testing.assert_array_equal(labels.numpy(), reference["labels"])
    cfg = preset("digits", steps=4, checkpoint_every=1000, snapshot_every=1000, log_every=1,
                 progress=False, sampler_steps=3)
    train_images(cfg, tmp_path / "digits", progress=False)
    np.testing.assert_allclose(losses(tmp_path / "digits"), GOLDEN["image_train"], **TOL)
