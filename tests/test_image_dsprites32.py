"""Procedural dSprites at 32x32: the presets' images and labels, tiny runs that resume exactly,
and `imagebm compose-experiment --preset dsprites-32` end to end with its classifier check
(the pipeline, not its numbers)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from _image_fixtures import assert_resumes_exactly

import imagebm.cli.compose as compose_cli
from imagebm.cli import main
from imagebm.compose import (
    CLASSIFIER_TARGET,
    COMPOSITION_PRESETS,
    CompositionConfig,
    factor_classifiers,
)
from imagebm.datasets import combination_index
from imagebm.presets import preset, short_run
from imagebm.train import load_image_run, load_training_data

PRESETS = ("dsprites-32", "dsprites-32-shortrun")


def test_the_presets_are_dsprites_16_at_32_pixels_with_labels_in_range():
    base = preset("dsprites-32")
    small = preset("dsprites-16")
    assert (base.image_size, base.model.image_size, base.model.arch) == (32, 32, "dsprites")
    assert (base.model.width, base.train.steps) == (small.model.width, small.train.steps)
    assert preset("dsprites-32-shortrun") == short_run(base)
    assert set(PRESETS) <= set(COMPOSITION_PRESETS)
    data = load_training_data(preset("dsprites-32", limit=300), None)
    assert data.images.shape == (300, 1, 32, 32) and data.images.dtype == torch.uint8
    assert data.num_classes == 3 and set(data.labels.tolist()) == {0, 1, 2}
    cfg = CompositionConfig(preset="dsprites-32", limit=300)
    joint = load_training_data(cfg.run_config("+".join(cfg.factors)), None)
    assert joint.images.shape[1:] == (1, 32, 32) and joint.num_classes == 12
    assert 0 <= joint.labels.min() and joint.labels.max() < 12
    held = {combination_index(c, cfg.factors, cfg.factor_bins) for c in cfg.hold_out}
    assert not held & set(joint.labels.tolist())


def tiny(name: str, steps: int):
    """Preset ``name`` cut down to seconds: 200 images, 8 a step, 3-step chains, width 8."""
    return preset(name, steps=steps, limit=200, batch_size=8, checkpoint_every=2,
                  snapshot_every=2, log_every=1, **{"sampler.steps": 3, "model.width": 8})


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_trains_and_resumes_exactly(tmp_path, name):
    unbroken = assert_resumes_exactly(lambda steps: tiny(name, steps), tmp_path)
    assert unbroken.config.image_size == 32


@dataclass
class TinyComposition(CompositionConfig):
    """The experiment's config with small data, batches and classifiers (the CLI keeps them)."""

    limit: int = 300
    batch_size: int = 8
    classifier_steps: int = 3


def test_compose_experiment_on_dsprites_32_reports_its_classifiers(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setattr(compose_cli, "CompositionConfig", TinyComposition)
    out = tmp_path / "exp"
    assert main(["compose-experiment", "--preset", "dsprites-32", "--steps", "2", "--num", "2",
                 "--chain-steps", "2", "--classifier-seed", "5", "--out", str(out),
                 "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["classifier_seed"] == 5
    assert sorted(p.name for p in (out / "classifiers").iterdir()) == [
        "scale-2-300-3-5.pt", "shape-3-300-3-5.pt", "x-2-300-3-5.pt"]
    assert report["image_size"] == 32 and report["config"]["preset"] == "dsprites-32"
    assert len(report["combinations"]) == 12
    check = report["classifiers"]
    assert check["n"] == 2000 and check["target"] == CLASSIFIER_TARGET
    assert set(check["accuracy"]) == {"shape", "scale", "x"}
    rows = [r["test data"] for r in report["combinations"]]
    for factor, accuracy in check["accuracy"].items():
        assert 0 <= accuracy <= 1
        by_combination = sum(r[factor] * r["n"] for r in rows) / sum(r["n"] for r in rows)
        assert accuracy == pytest.approx(by_combination)
    short = [f for f, a in check["accuracy"].items() if a < CLASSIFIER_TARGET]
    page = capsys.readouterr().out
    assert "procedural dSprites 32×32" in page and "Factor classifiers' accuracy on 2000" in page
    assert "seed 0 (classifiers: seed 5)" in page
    assert (f"below {CLASSIFIER_TARGET} for {', '.join(short)}" if short else
            f"all at least {CLASSIFIER_TARGET}") in page
    assert page.strip() == (out / "report.md").read_text().strip()
    assert load_image_run(out / "run-shape").model.config.image_size == 32
    assert (out / "held-out-composed.png").exists()


def test_a_fixed_classifier_seed_gives_every_experiment_seed_the_same_classifiers(tmp_path):
    def weights(name, **seeds):
        cfg = TinyComposition(preset="dsprites-32", **seeds)
        return factor_classifiers(cfg, 32, tmp_path / name)["x"].state_dict()

    own, fixed = weights("own", seed=1), weights("fixed", seed=1, classifier_seed=0)
    reference = weights("seed0", seed=0)
    assert all(torch.equal(fixed[k], reference[k]) for k in reference)
    assert not all(torch.equal(own[k], reference[k]) for k in reference)
