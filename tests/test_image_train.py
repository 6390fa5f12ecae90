"""imagebm training, sampling and scoring on the shared trainer (tiny digits runs)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from imagebm.cli import main
from imagebm.datasets import DATASETS, load_dataset
from imagebm.evaluate import score_samples
from imagebm.models import ARCHITECTURES
from imagebm.sample import SampleConfig, sample_images, write_samples
from imagebm.train import PRESETS, load_image_run, preset, train_images
from trajebm.engine.errors import UsageError


def tiny(steps: int, **overrides):
    cfg = preset("digits", steps=steps, checkpoint_every=3, snapshot_every=2, snapshot_keep=3,
                 log_every=1, **overrides)
    return replace(cfg, model=replace(cfg.model, width=8),
                   sampler=replace(cfg.sampler, steps=5))


def energies(model, images, labels):
    with torch.no_grad():
        return model(images, labels).mean().item()


def test_presets_are_consistent():
    for name, cfg in PRESETS.items():
        assert cfg.dataset in DATASETS, name
        assert ARCHITECTURES[cfg.model.arch].supports(cfg.model.image_size), name
        assert not cfg.conditional or cfg.dataset != "dtd", name
    with pytest.raises(UsageError, match="unknown preset"):
        preset("cifar100")
    with pytest.raises(UsageError, match="unknown setting"):
        preset("digits", learning_rate=1.0)


def test_training_lowers_data_energy_relative_to_noise(tmp_path):
    test = load_dataset("digits", split="test")
    x, y = test.float()[:200], test.labels[:200]
    noise = torch.rand_like(x)
    cfg = tiny(80, lr=3e-3)
    torch.manual_seed(cfg.seed)
    from imagebm.models import build_model
    from imagebm.train import model_config

    before = build_model(model_config(cfg, 10)).eval()
    gap_before = energies(before, noise, y) - energies(before, x, y)
    model = train_images(cfg, tmp_path / "run", progress=False)
    gap_after = energies(model, noise, y) - energies(model, x, y)
    assert gap_after > gap_before + 0.05, (gap_before, gap_after)
    assert gap_after > 0


def test_resumed_image_run_equals_unbroken_run(tmp_path):
    unbroken = train_images(tiny(6), tmp_path / "a", progress=False)
    train_images(tiny(3), tmp_path / "b", progress=False)
    (tmp_path / "b" / "model.pt").unlink()
    resumed = train_images(tiny(6), tmp_path / "b", resume=True, progress=False)
    for a, b in zip(unbroken.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["buffer"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["buffer"]
    assert a["data"].dtype == torch.uint8 and torch.equal(a["data"], b["data"])
    assert torch.equal(a["cond"], b["cond"])
    with pytest.raises(UsageError, match="already holds a trained model"):
        train_images(tiny(6), tmp_path / "a", progress=False)


def test_sampling_with_snapshot_ensemble_writes_grid_array_and_gif(tmp_path):
    train_images(tiny(6), tmp_path / "run", progress=False)
    run = load_image_run(tmp_path / "run")
    assert len(list((tmp_path / "run" / "snapshots").glob("*.pt"))) == 3
    cfg = SampleConfig(num=24, chunks=3, chunk_steps=4, labels=[3, 7], gif_frames=8)
    x, y, frames = sample_images(run, cfg, progress=False)
    assert x.shape == (24, 1, 8, 8) and 0 <= x.min() and x.max() <= 1
    assert y.tolist() == [3, 7] * 12 and len(frames) == 3
    again, _, _ = sample_images(run, cfg, progress=False)
    assert torch.equal(x, again)
    out = write_samples(tmp_path / "s", x, y, frames)
    assert {"samples.npy", "samples.png", "labels.npy", "chain.gif"} <= {
        p.name for p in out.iterdir()}
    np.testing.assert_array_equal(np.load(out / "samples.npy"), x.numpy())
    with pytest.raises(UsageError, match="out of range"):
        sample_images(run, SampleConfig(num=4, labels=[10]), progress=False)


def test_domain_scores_separate_data_from_noise(tmp_path):
    cfg = tiny(1)
    test = load_dataset("digits", split="test")
    cache = tmp_path / "classifiers"
    real = score_samples(test.float(), cfg, labels=test.labels, cache_dir=cache, progress=False)
    noise = score_samples(torch.rand(359, 1, 8, 8), cfg, labels=test.labels, cache_dir=cache,
                          progress=False)
    assert list(cache.iterdir())  # trained once, then reused
    assert real["model"]["fid"] < 1e-6 < real["floor"]["fid"]  # the same images: distance 0
    assert noise["model"]["fid"] > 3 * real["floor"]["fid"]
    assert real["model"]["label_accuracy"] > 0.9 > noise["model"]["label_accuracy"]
    with pytest.raises(UsageError, match="shape"):
        score_samples(torch.rand(20, 3, 8, 8), cfg, cache_dir=cache, progress=False)


def test_cli_train_sample_score_and_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IMAGEBM_DATA", str(tmp_path / "data"))
    run = str(tmp_path / "run")
    assert main(["train", "--preset", "digits", "--steps", "2", "--out", run, "--quiet"]) == 0
    assert main(["sample", "--run", run, "--num", "12", "--chunks", "1", "--chunk-steps", "2",
                 "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert (tmp_path / "s" / "samples.png").exists()
    assert main(["train", "--preset", "cifar10-cond", "--out", str(tmp_path / "c"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "imagebm download cifar10" in err and err.count("\n") == 1
    assert main(["train", "--preset", "nope", "--out", run]) == 2
    assert main(["sample", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert main(["score", "--run", run, "--samples", str(tmp_path / "none")]) == 2
    assert "no such samples file" in capsys.readouterr().err
