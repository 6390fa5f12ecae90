"""Restoring test images: inpainting, salt-and-pepper, cross-class mapping, and bad input."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from _image_fixtures import digits_classifier, tiny_digits_run

from imagebm.cli import main
from imagebm.datasets import ImageData
from imagebm.metrics import nearest
from imagebm.restore import (
    DEFAULT_LANGEVIN_STEPS,
    RestoreConfig,
    box_mask,
    check_mask,
    reference_fills,
    restore,
    salt_and_pepper,
)
from imagebm.train import load_image_run, short_run
from trajebm.engine.errors import UsageError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_digits_run(tmp_path_factory.mktemp("restore") / "run")


@pytest.fixture(scope="module")
def data_home(tmp_path_factory):
    """A data root whose classifier cache holds a quickly trained digits classifier."""
    root = tmp_path_factory.mktemp("data")
    digits_classifier(root / "classifiers" / "digits-8px-labels.pt")
    return root


def test_inpainting_never_changes_unmasked_pixels(run):
    cfg = RestoreConfig(task="inpaint", num=6, langevin_steps=4, box=(1, 2, 3, 4))
    r = restore(run, cfg, progress=False)
    keep = r.masks == 0
    assert torch.equal(r.masks[0, 0], box_mask((1, 8, 8), (1, 2, 3, 4))[0])
    assert torch.equal(r.restored[keep], r.originals[keep])
    assert torch.equal(r.corrupted[keep], r.originals[keep])
    assert not torch.equal(r.restored[~keep], r.corrupted[~keep])  # the box did move
    assert r.restored.min() >= 0 and r.restored.max() <= 1
    scores = r.metrics["scores"]
    assert set(scores) == {"ebm", "corrupted", "mean_fill", "nearest_neighbour", "knn_mean_fill"}
    assert r.metrics["energy"] == "-logsumexp_y -E(x, y)"
    user = torch.zeros(8, 8)
    user[::2, ::3] = 1
    r2 = restore(run, replace(cfg, box=None, given_label=True), mask=user, progress=False)
    keep = r2.masks == 0
    assert torch.equal(r2.restored[keep], r2.originals[keep])
    assert r2.metrics["energy"] == "E(x, true label)"
    mean = restore(run, replace(cfg, chains=3), progress=False)  # the mean of three chains
    keep = mean.masks == 0
    assert torch.equal(mean.restored[keep], mean.originals[keep])
    assert not torch.equal(mean.restored[~keep], r.restored[~keep])


def test_salt_and_pepper_sets_the_papers_values():
    x = torch.full((3, 2, 10, 10), 0.5)
    y, mask = salt_and_pepper(x, 0.05, torch.Generator().manual_seed(0))
    assert torch.equal(mask[:, 0], mask[:, 1])  # a pixel is all its channels
    assert (mask[:, 0].flatten(1).sum(1) == 10).all()  # 5 to 0.1 and 5 to 0.9 of 100
    assert ((y == 0.1).flatten(1).sum(1) == 10).all() and ((y == 0.9).flatten(1).sum(1) == 10).all()
    assert torch.equal(y[mask == 0], x[mask == 0])


def test_nearest_on_visible_pixels_ignores_masked_pixels():
    train = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    query = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])  # top row like image 1, bottom like 0
    top = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert nearest(query, train, 1, top)[1][:, 0].tolist() == [1]
    assert nearest(query, train, 1, 1 - top)[1][:, 0].tolist() == [0]
    assert nearest(query, train, 1, top, torch.tensor([[True, False]]))[1][:, 0].tolist() == [0]


def _hand_made_training_set() -> ImageData:
    """Six 1x1x4 images: the first two pixels (visible) rank them by distance to (0, 0), the
    last two (masked) are what a fill copies; classes 0, 1, 0, 1, 0, 1."""
    rows = [[0, 0, 10, 20], [10, 0, 30, 40], [20, 0, 50, 60], [30, 0, 70, 80],
            [40, 0, 90, 100], [255, 255, 255, 255]]
    images = torch.tensor(rows, dtype=torch.uint8).view(6, 1, 1, 4)
    return ImageData(images, torch.tensor([0, 1, 0, 1, 0, 1]), 2, "hand-made")


def test_knn_mean_fill_averages_the_k_nearest_on_the_masked_pixels():
    data = _hand_made_training_set()
    train = data.float()
    masks = torch.tensor([0.0, 0.0, 1.0, 1.0]).view(1, 1, 1, 4)
    corrupted = torch.tensor([0.0, 0.0, 0.5, 0.5]).view(1, 1, 1, 4)  # nearest: 0, 1, 2, ...
    fills = reference_fills(corrupted, masks, None, data, 2, knn_k=3)
    assert set(fills) == {"mean_fill", "nearest_neighbour", "knn_mean_fill"}
    knn = fills["knn_mean_fill"]
    assert torch.allclose(knn[..., 2:], train[:3, ..., 2:].mean(0, keepdim=True))
    assert torch.equal(knn[masks == 0], corrupted[masks == 0])  # visible pixels untouched
    assert torch.equal(fills["nearest_neighbour"][..., 2:], train[:1, ..., 2:])
    one = reference_fills(corrupted, masks, None, data, 2, knn_k=1)
    assert torch.equal(one["knn_mean_fill"], one["nearest_neighbour"])
    assert torch.equal(one["nearest_neighbour"], fills["nearest_neighbour"])
    by_class = reference_fills(corrupted.expand(2, -1, -1, -1), masks.expand(2, -1, -1, -1),
                               torch.tensor([0, 1]), data, 2, knn_k=3)["knn_mean_fill"]
    assert torch.allclose(by_class[0, ..., 2:], train[[0, 2, 4], ..., 2:].mean(0))
    assert torch.allclose(by_class[1, ..., 2:], train[[1, 3, 5], ..., 2:].mean(0))
    for k, message in ((0, "knn_k must be in 1..6"), (7, "knn_k must be in 1..6")):
        with pytest.raises(UsageError, match=message):
            reference_fills(corrupted, masks, None, data, 2, knn_k=k)
    with pytest.raises(UsageError, match="exceeds the 3 training images of class 1"):
        reference_fills(corrupted, masks, torch.tensor([1]), data, 2, knn_k=4)
    with pytest.raises(UsageError, match="knn_k must be >= 1"):
        RestoreConfig(knn_k=0)


def test_saltpepper_known_and_blind(run):
    known = restore(run, RestoreConfig(task="saltpepper", num=5, langevin_steps=3),
                    progress=False)
    assert abs(known.metrics["masked_fraction"] - 6 / 64) < 1e-6  # 3 + 3 of 64 pixels
    keep = known.masks == 0
    assert torch.equal(known.restored[keep], known.originals[keep])
    blind = restore(run, RestoreConfig(task="saltpepper", num=5, langevin_steps=3, blind=True),
                    progress=False)
    assert not blind.metrics["mask_known"] and "ebm_unmasked_mse" in blind.metrics
    assert blind.metrics["sampler"]["step_size"] == 1.0


def test_cli_restore_writes_arrays_figure_and_metrics(run, data_home, tmp_path, monkeypatch,
                                                      capsys):
    monkeypatch.setenv("IMAGEBM_DATA", str(data_home))
    for task in ("inpaint", "saltpepper", "crossclass"):
        out = tmp_path / task
        extra = ["--source", "3", "--target", "5"] if task == "crossclass" else []
        assert main(["restore", "--run", str(run), "--task", task, "--out", str(out), "--num",
                     "4", "--steps", "2", "--quiet", *extra]) == 0
        arrays = {n: np.load(out / f"{n}.npy")
                  for n in ("originals", "corrupted", "restored", "masks")}
        for name, a in arrays.items():
            assert a.shape == (4, 1, 8, 8) and a.dtype == np.float32, name
            assert a.min() >= 0 and a.max() <= 1, name
        assert (out / "restore.png").stat().st_size > 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["task"] == task
    assert set(np.unique(np.load(tmp_path / "inpaint" / "masks.npy"))) == {0.0, 1.0}
    assert (np.load(tmp_path / "crossclass" / "labels.npy") == 3).all()
    assert (np.load(tmp_path / "crossclass" / "targets.npy") == 5).all()
    assert 0 <= metrics["target_fraction"] <= 1 and metrics["distance_to_source"]["mse"] >= 0
    assert "PSNR" not in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--task", "crossclass", "--target", "10"], "target class 10 out of range"),
    (["--task", "crossclass", "--source", "-1"], "source class -1 out of range"),
    (["--task", "inpaint", "--box", "6", "0", "4", "8"], "does not fit"),
    (["--task", "inpaint", "--mask", "BADSHAPE"], "mask has shape"),
    (["--task", "inpaint", "--mask", "NOT01"], "0 \\(keep\\) or 1"),
    (["--task", "saltpepper", "--box", "0", "0", "2", "2"], "inpaint task only"),
    (["--task", "inpaint", "--blind"], "saltpepper task only"),
    (["--task", "inpaint", "--num", "0"], "num >= 1"),
    (["--task", "inpaint", "--knn-k", "0"], "knn_k must be >= 1"),
    (["--task", "saltpepper", "--knn-k", "100000"], "knn_k must be in 1\\.\\.1[0-9]{3} "),
    (["--task", "inpaint", "--given-label", "--knn-k", "1000"], "exceeds the 1[0-9]{2} training"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(run, tmp_path, capsys, args, message):
    np.save(tmp_path / "badshape.npy", np.ones((3, 8, 8), np.float32))
    np.save(tmp_path / "not01.npy", np.full((8, 8), 0.5, np.float32))
    args = [str(tmp_path / f"{a.lower()}.npy") if a in ("BADSHAPE", "NOT01") else a
            for a in args]
    out = tmp_path / "nothing"
    assert main(["restore", "--run", str(run), "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(message, err), err
    assert not out.exists()


def test_unconditional_run_refuses_crossclass_but_inpaints(tmp_path, capsys):
    uncond = tiny_digits_run(tmp_path / "uncond", conditional=False)
    out = tmp_path / "nothing"
    assert main(["restore", "--run", str(uncond), "--task", "crossclass", "--out", str(out),
                 "--quiet"]) == 2
    assert "class-conditional" in capsys.readouterr().err and not out.exists()
    r = restore(load_image_run(uncond), RestoreConfig(num=3, langevin_steps=2), progress=False)
    assert r.metrics["energy"] == "E(x)"
    with pytest.raises(UsageError, match="0 \\(keep\\) or 1"):
        check_mask(np.full((8, 8), 2.0), 3, (1, 8, 8))


def test_default_chain_length_is_the_training_chains_for_short_run_runs(run):
    persistent = restore(run, RestoreConfig(task="inpaint", num=2), progress=False)
    assert persistent.metrics["sampler"]["steps"] == DEFAULT_LANGEVIN_STEPS["inpaint"]
    loaded = load_image_run(run)
    short = replace(loaded, config=short_run(loaded.config))
    r = restore(short, RestoreConfig(task="inpaint", num=2), progress=False)
    assert r.metrics["sampler"]["steps"] == loaded.config.sampler.steps == 2
    blind = restore(short, RestoreConfig(task="saltpepper", num=2, blind=True), progress=False)
    assert blind.metrics["sampler"]["steps"] == DEFAULT_LANGEVIN_STEPS["blind"]
