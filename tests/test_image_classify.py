"""The conditional EBM as a classifier, its softmax reference, and the hybrid training term."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from imagebm import classify
from imagebm.classify import (
    EnergyClassifier,
    accuracy,
    load_reference,
    predict,
    reference_config,
    train_reference,
)
from imagebm.cli import main
from imagebm.models import ImageEBMConfig, build_model
from imagebm.train import class_loss, load_image_run, preset, train_images
from trajebm.engine.errors import UsageError


def tiny(steps: int, name: str = "digits", **overrides):
    cfg = preset(name, steps=steps, checkpoint_every=1000, snapshot_every=1000, **overrides)
    return replace(cfg, sampler=replace(cfg.sampler, steps=5))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("classify") / "run"
    train_images(tiny(4), out, progress=False)
    return out


def test_logits_are_minus_energies_and_their_argmax_is_argmin_energy():
    torch.manual_seed(0)
    model = build_model(ImageEBMConfig(arch="small", image_size=8, channels=1, width=8,
                                       num_classes=4)).eval()
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        loop = torch.stack([model(x, torch.full((6,), y)) for y in range(4)], 1)
        logits = EnergyClassifier(model)(x)
    torch.testing.assert_close(logits, -loop)
    assert torch.equal(logits.argmax(1), loop.argmin(1))


def test_refinement_is_differentiable_and_runs_without_grad():
    torch.manual_seed(0)
    model = build_model(ImageEBMConfig(arch="small", image_size=8, channels=1, width=8,
                                       num_classes=3))
    clf = EnergyClassifier(model, langevin_steps=3, samples=2)
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    (g,) = torch.autograd.grad(clf(x)[:, 0].sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert predict(clf, x.detach()).shape == (2, 3)
    assert all(p.grad is None for p in model.parameters())


def test_unconditional_runs_and_bad_settings_are_refused():
    model = build_model(ImageEBMConfig(arch="small", image_size=8, channels=1, width=8))
    with pytest.raises(UsageError, match="class-conditional"):
        EnergyClassifier(model)
    with pytest.raises(UsageError, match="class energies"):
        model.class_energies(torch.rand(1, 1, 8, 8))
    cond = build_model(ImageEBMConfig(arch="small", image_size=8, channels=1, width=8,
                                      num_classes=3))
    with pytest.raises(UsageError, match="langevin_steps"):
        EnergyClassifier(cond, langevin_steps=-1)
    with pytest.raises(UsageError, match="class_weight"):
        preset("digits", class_weight=1.0, conditional=False)


def test_reference_round_trip_and_budget(run, tmp_path):
    r = load_image_run(run)
    cfg = reference_config(r.config, steps=150)
    assert (cfg.batch_size, cfg.lr, cfg.seed) == (r.config.batch_size, r.config.train.lr,
                                                 r.config.train.seed)
    model = train_reference(r, tmp_path / "ref", config=cfg, progress=False)
    loaded = load_reference(tmp_path / "ref")
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(predict(model, x), predict(loaded, x))
    test = classify.test_split(r.config)
    assert accuracy(loaded, test.float(), test.labels) > 0.5  # chance is 0.1


def test_classification_term_is_trained_beside_the_contrastive_loss(tmp_path):
    data = classify.test_split(preset("digits"))
    x, y = data.float()[:200], data.labels[:200]
    torch.manual_seed(0)
    model = build_model(ImageEBMConfig(arch="small", image_size=8, channels=1, width=8,
                                       num_classes=10))
    loss = class_loss(model, 2.0)
    torch.testing.assert_close(loss(x, y), 2.0 * F.cross_entropy(-model.class_energies(x), y))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = accuracy(EnergyClassifier(model), x, y)
    for _ in range(60):
        opt.zero_grad()
        loss(x, y).backward()
        opt.step()
    assert accuracy(EnergyClassifier(model), x, y) > max(0.6, before + 0.3)
    for weight in (0.0, 0.5):
        out = tmp_path / f"w{weight}"
        train_images(tiny(2, class_weight=weight), out, progress=False)
        with open(out / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        if weight:
            assert all(float(row["aux"]) > 0 for row in rows)
        else:
            assert all("aux" not in row for row in rows)


def test_cli_classify_trains_the_reference_once_and_reports(run, tmp_path, capsys):
    report = tmp_path / "classify.json"
    assert main(["classify", "--run", str(run), "--langevin-steps", "0", "2", "--out",
                 str(report), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "softmax reference" in text and "2 Langevin steps" in text
    record = json.loads(report.read_text())
    assert set(record["ebm_accuracy"]) == {"0", "2"}
    assert 0.0 <= record["softmax_accuracy"] <= 1.0
    made = (run / "softmax" / "model.pt").stat().st_mtime_ns
    assert main(["classify", "--run", str(run), "--quiet"]) == 0
    assert (run / "softmax" / "model.pt").stat().st_mtime_ns == made
    assert main(["classify", "--run", str(run), "--langevin-steps", "-1"]) == 2
    assert main(["classify", "--run", str(run), "--reference", str(tmp_path / "none")]) == 2
    assert "no such softmax reference" in capsys.readouterr().err
