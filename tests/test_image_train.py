"""imagebm training, sampling and scoring on the shared trainer (tiny digits runs)."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from imagebm.cli import main
from imagebm.datasets import DATASETS, load_dataset
from imagebm.evaluate import score_samples
from imagebm.models import ARCHITECTURES, build_model
from imagebm.presets import ALIASES, PRESETS, ImageTrainConfig
from imagebm.sample import SampleConfig, sample_images, write_samples
from imagebm.train import ImageRun, load_image_run, model_config, preset, train_images
from trajebm.engine.errors import UsageError
from trajebm.engine.settings import resolve
from trajebm.engine.train import ContrastiveConfig, TrainConfig


def tiny(steps: int, **overrides):
    cfg = preset("digits", steps=steps, checkpoint_every=3, snapshot_every=2, snapshot_keep=3,
                 log_every=1, **overrides)
    return replace(cfg, model=replace(cfg.model, width=8), sampler=replace(cfg.sampler, steps=5))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 6-step digits run (not to be modified): its folder, config and model."""
    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = tiny(6)
    return out, cfg, train_images(cfg, out, progress=False)


def energies(model, images, labels):
    with torch.no_grad():
        return model(images, labels).mean().item()


def test_presets_are_consistent():
    for name in PRESETS:
        cfg = PRESETS.get(name)
        assert cfg.dataset in DATASETS, name
        assert ARCHITECTURES[cfg.model.arch].supports(cfg.model.image_size), name
        assert not cfg.conditional or cfg.dataset != "dtd", name
    with pytest.raises(UsageError, match="unknown preset"):
        preset("cifar100")
    with pytest.raises(UsageError, match="unknown setting"):
        preset("digits", learning_rate=1.0)


def test_preset_overrides_reach_the_engine_config_inside_the_image_config():
    cfg = preset("digits")
    for owner in (TrainConfig, ContrastiveConfig, ImageTrainConfig):
        for f in fields(owner):  # every key of a preset has one home
            resolve(cfg, f.name, ALIASES)
    cfg = preset("digits", steps=500, batch_size=64, cosine_decay=True, init="dsprites")
    assert isinstance(cfg.train, TrainConfig)
    assert (cfg.train.steps, cfg.train.cosine_decay, cfg.batch_size, cfg.init) == (
        500, True, 64, "dsprites")
    assert cfg.train.lr == PRESETS.get("digits").train.lr == 1e-3
    cfg.train.lr, cfg.model.width = 1.0, 3  # a copy: the preset itself is untouched
    assert (PRESETS.get("digits").train.lr, PRESETS.get("digits").model.width) == (1e-3, 16)
    whole = preset("digits", train=TrainConfig(steps=7), log_every=2)
    assert (whole.train.steps, whole.train.log_every) == (7, 2)
    for bad in ({"steps": -1}, {"lr": 0.0}, {"batch_size": 0}):
        with pytest.raises(UsageError):
            preset("digits", **bad)


def test_training_lowers_data_energy_relative_to_noise(tmp_path):
    test = load_dataset("digits", split="test")
    x, y = test.float()[:200], test.labels[:200]
    noise = torch.rand_like(x)
    cfg = tiny(80, lr=3e-3)
    torch.manual_seed(cfg.train.seed)
    before = build_model(model_config(cfg, 10)).eval()
    gap_before = energies(before, noise, y) - energies(before, x, y)
    model = train_images(cfg, tmp_path / "run", progress=False)
    gap_after = energies(model, noise, y) - energies(model, x, y)
    assert gap_after > gap_before + 0.05, (gap_before, gap_after)
    assert gap_after > 0


def test_resumed_image_run_equals_unbroken_run(tmp_path, trained):
    a_dir, cfg, unbroken = trained
    train_images(tiny(3), tmp_path / "b", progress=False)
    (tmp_path / "b" / "model.pt").unlink()
    with pytest.raises(UsageError, match="run in progress"):  # not overwritten without resume
        train_images(tiny(6), tmp_path / "b", progress=False)
    resumed = train_images(tiny(6), tmp_path / "b", resume=True, progress=False)
    for a, b in zip(unbroken.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    a = torch.load(a_dir / "checkpoint.pt", weights_only=False)["buffer"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["buffer"]
    assert a["data"].dtype == torch.uint8 and torch.equal(a["data"], b["data"])
    assert torch.equal(a["cond"], b["cond"])
    with pytest.raises(UsageError, match="already holds a trained model"):
        train_images(cfg, a_dir, progress=False)


def test_run_files_hold_the_composed_config_and_load_back(tmp_path, trained):
    done, cfg, model = trained
    record = torch.load(done / "model.pt", weights_only=True)
    assert record["config"]["train"]["steps"] == 6 and "steps" not in record["config"]
    info = json.loads((done / "run.json").read_text())
    assert info["config"]["sampler"]["steps"] == 5 and "sampler" not in info["config"]["train"]
    assert load_image_run(done).config == cfg
    training = tmp_path / "training"  # still training: weights from the checkpoint
    shutil.copytree(done, training)
    (training / "model.pt").unlink()
    run = load_image_run(training)
    assert run.config == cfg and not run.model.training
    for a, b in zip(model.state_dict().values(), run.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    (training / "checkpoint.pt").write_bytes(b"half a checkpoint")
    buffer_start = SampleConfig(start="buffer", num=4, chunks=0)
    for bad in (lambda: load_image_run(training),
                lambda: sample_images(run, buffer_start, progress=False)):
        with pytest.raises(UsageError, match="checkpoint.pt is not a readable checkpoint"):
            bad()
    flat = dict(record["config"])  # the layout before the trainer's settings moved to `train`
    flat.update(flat.pop("train"))
    torch.save({**record, "config": flat}, training / "model.pt")
    with pytest.raises(UsageError, match="model.pt: written by an older imagebm"):
        load_image_run(training)


def test_sampling_with_snapshot_ensemble_writes_grid_array_and_gif(tmp_path, trained):
    run = load_image_run(trained[0])
    assert len(list((trained[0] / "snapshots").glob("*.pt"))) == 3
    cfg = SampleConfig(num=24, chunks=3, chunk_steps=4, labels=[3, 7], gif_frames=8, ensemble=3)
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
    write_samples(out, x, None, [])  # unlabelled samples must not pair with the old labels
    assert not (out / "labels.npy").exists()


def test_sampling_runs_models_in_eval_mode_and_gives_them_their_mode_back(tmp_path):
    cfg = tiny(1)
    torch.manual_seed(0)
    model = build_model(replace(model_config(cfg, 10), dropout=0.5)).train()
    frozen = copy.deepcopy(model).eval()
    u = {n: b.clone() for n, b in model.named_buffers() if n.endswith("_u")}
    assert u
    settings = SampleConfig(num=8, chunks=2, chunk_steps=3, reinit=0.0)
    x, _, _ = sample_images(ImageRun(tmp_path, cfg, model, {}), settings, progress=False)
    assert model.training
    assert all(torch.equal(b, u[n]) for n, b in model.named_buffers() if n.endswith("_u"))
    again, _, _ = sample_images(ImageRun(tmp_path, cfg, frozen, {}), settings, progress=False)
    assert torch.equal(x, again)  # dropout off: the chains followed one fixed energy


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
    info = (tmp_path / "run" / "run.json").read_text()
    assert main(["sample", "--run", run, "--num", "4", "--out", run, "--quiet"]) == 2
    assert "training run's folder" in capsys.readouterr().err
    assert (tmp_path / "run" / "run.json").read_text() == info
    assert main(["train", "--preset", "digits", "--steps", "-1", "--out", str(tmp_path / "n"),
                 "--quiet"]) == 2
    assert "steps must be >= 0" in capsys.readouterr().err
    assert main(["train", "--preset", "cifar10-cond", "--out", str(tmp_path / "c"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "imagebm download cifar10" in err and err.count("\n") == 1
    assert main(["train", "--preset", "nope", "--out", run]) == 2
    assert main(["sample", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert main(["score", "--run", run, "--samples", str(tmp_path / "none")]) == 2
    assert "no such samples file" in capsys.readouterr().err
