"""Composing conditional image EBMs: held-out dSprites combinations, `imagebm compose`, and a
tiny end-to-end compositional-generalisation run (the pipeline, not its numbers)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from imagebm.cli import main
from imagebm.compose import (
    ComposeConfig,
    CompositionConfig,
    compose_images,
    compositional_generalisation,
)
from imagebm.datasets import combination_index, factor_names, load_dataset
from imagebm.train import load_image_run, preset, train_images
from trajebm.engine.errors import UsageError

BINS = {"scale": 2, "x": 2}
HELD = ({"shape": 2, "x": 0},)


def tiny(label_factor: str, **overrides):
    cfg = preset("dsprites-16", label_factor=label_factor, factor_bins=BINS, hold_out=HELD,
                 limit=300, batch_size=16, steps=2, checkpoint_every=2, snapshot_every=2,
                 **overrides)
    return replace(cfg, model=replace(cfg.model, width=4),
                   sampler=replace(cfg.sampler, steps=2))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished 2-step runs conditioned on shape and on x (2 bins), with hearts-left held out."""
    root = tmp_path_factory.mktemp("runs")
    for factor in ("shape", "x"):
        train_images(tiny(factor), root / factor, progress=False)
    return root


def test_hold_out_drops_exactly_the_combinations_and_is_deterministic():
    kw = dict(image_size=16, limit=600, seed=1, factor_bins=BINS)
    full = load_dataset("dsprites-procedural", label_factor="shape+x", **kw)
    held = load_dataset("dsprites-procedural", label_factor="shape+x", hold_out=HELD, **kw)
    again = load_dataset("dsprites-procedural", label_factor="shape+x", hold_out=HELD, **kw)
    assert torch.equal(held.images, again.images)
    heart_left = combination_index({"shape": 2, "x": 0}, ("shape", "x"), BINS)
    assert heart_left == 4 and full.num_classes == 6
    assert (full.labels == heart_left).any() and not (held.labels == heart_left).any()
    kept = full.labels != heart_left
    assert torch.equal(held.images, full.images[kept]) and torch.equal(held.labels,
                                                                      full.labels[kept])
    x = load_dataset("dsprites-procedural", label_factor="x", **kw)
    left = x.factors["x"] < 0.5
    assert torch.equal(x.labels, torch.from_numpy((~left).astype(np.int64)))
    assert full.class_names[heart_left] == "heart/" + factor_names("x", BINS)[0]
    for bad in (dict(hold_out=({"colour": 1},)), dict(hold_out=({"x": 2},)),
                dict(factor_bins={"x": 0}), dict(label_factor="shape+shape")):
        with pytest.raises(UsageError):
            load_dataset("dsprites-procedural", limit=10, **{"factor_bins": BINS, **bad})
    with pytest.raises(UsageError, match="hold_out applies to dsprites only"):
        load_dataset("digits", hold_out=HELD)


def test_compose_cli_writes_samples_and_refuses_bad_input(runs, tmp_path, capsys):
    out = tmp_path / "composed"
    base = ["compose", "--runs", str(runs / "shape"), str(runs / "x"), "--num", "5",
            "--steps", "2"]
    assert main([*base, "--labels", "2", "0", "--out", str(out)]) == 0
    samples = np.load(out / "samples.npy")
    assert samples.shape == (5, 1, 16, 16) and 0 <= samples.min() and samples.max() <= 1
    assert (out / "samples.png").exists()
    info = json.loads((out / "run.json").read_text())
    assert info["labels"] == [2, 0] and info["config"]["langevin_steps"] == 2
    # one expert alone is sampling that model; one call may ask for several combinations
    one = compose_images([runs / "x"], [1], ComposeConfig(num=3, langevin_steps=2))
    assert one.shape == (3, 1, 16, 16)
    several = compose_images([load_image_run(runs / "shape"), load_image_run(runs / "x")],
                             [torch.tensor([0, 1, 2]), torch.tensor([1, 1, 0])],
                             ComposeConfig(num=3, langevin_steps=2))
    assert several.shape == (3, 1, 16, 16)

    bigger = tmp_path / "bigger"
    cfg = tiny("x")
    train_images(replace(cfg, image_size=32, model=replace(cfg.model, image_size=32)), bigger,
                 progress=False)
    capsys.readouterr()
    for labels, runs_, why in (
            (["3", "0"], None, "out of range"),
            (["0"], None, "2 runs but 1 labels"),
            (["0", "0"], [str(runs / "x"), str(bigger)], "must share image size"),
            (["0", "0"], [str(runs / "x"), str(runs / "x")], "is a training run's folder")):
        dest = runs / "x" if "training run" in why else tmp_path / "bad"
        argv = ["compose", "--runs", *(runs_ or base[2:4]), "--labels", *labels,
                "--out", str(dest), "--num", "2", "--steps", "1"]
        assert main(argv) == 2
        assert why in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_tiny_compositional_generalisation_run_writes_its_report(tmp_path):
    cfg = CompositionConfig(factors=("shape", "x"), factor_bins={"x": 2}, hold_out=HELD,
                            steps=2, limit=300, batch_size=16, num=2,
                            classifier_steps=3, sampler=ComposeConfig(langevin_steps=2))
    report = compositional_generalisation(tmp_path / "exp", cfg, progress=False)
    assert set(report["summary"]) == {"held_out", "seen"}
    assert set(report["summary"]["held_out"]) == {"composed", "joint", "test data"}
    rows = report["combinations"]
    assert len(rows) == 6 and [r["held_out"] for r in rows] == [False] * 4 + [True, False]
    assert rows[4]["composed"]["n"] == 2 and set(rows[4]["joint"]) >= {"all_right", "shape"}
    for name in ("report.json", "report.md", "held-out-composed.png", "held-out-joint.png"):
        assert (tmp_path / "exp" / name).exists()
    assert "| held out |" in (tmp_path / "exp" / "report.md").read_text()
    joint = load_image_run(tmp_path / "exp" / "run-joint")
    assert joint.model.config.num_classes == 6 and joint.config.hold_out == HELD
    # the runs are reused when the config matches, refused when it does not
    again = compositional_generalisation(tmp_path / "exp", replace(cfg, num=3), progress=False)
    assert again["combinations"][4]["composed"]["n"] == 3
    with pytest.raises(UsageError, match="another config"):
        compositional_generalisation(tmp_path / "exp", replace(cfg, steps=3),
                                     progress=False)

    # an interrupted experiment continues its runs: a kill after a run's last checkpoint
    # and before its model.pt leaves only the checkpoint
    shutil.copytree(tmp_path / "exp", tmp_path / "b")
    (tmp_path / "b" / "run-x" / "model.pt").unlink()
    resumed = compositional_generalisation(tmp_path / "b", replace(cfg, num=3), progress=False)
    assert resumed["summary"] == again["summary"]
    kept, back = (load_image_run(tmp_path / d / "run-x").model for d in ("exp", "b"))
    for x, y in zip(kept.state_dict().values(), back.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    # ... but not with another config, and its checkpoint is left untouched
    (tmp_path / "b" / "run-shape" / "model.pt").unlink()
    before = (tmp_path / "b" / "run-shape" / "checkpoint.pt").read_bytes()
    with pytest.raises(UsageError, match="interrupted run with another config"):
        compositional_generalisation(tmp_path / "b", replace(cfg, steps=3), progress=False)
    assert (tmp_path / "b" / "run-shape" / "checkpoint.pt").read_bytes() == before
