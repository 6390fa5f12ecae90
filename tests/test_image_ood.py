"""Out-of-distribution detection: AUROC, the generated OOD sets, user files, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _image_fixtures import tiny_digits_run

from imagebm.cli import main
from imagebm.datasets import load_dataset
from imagebm.ood import auroc, dataset_sets, generated_sets, load_ood_file, ood_report
from imagebm.train import preset, train_images
from trajebm.engine.errors import UsageError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_digits_run(tmp_path_factory.mktemp("ood") / "run", steps=4, chain_steps=3)


def test_auroc_matches_hand_counts():
    # in-distribution beats OOD in 5 of the 6 pairs (0.4 < 0.5)
    assert auroc(np.array([0.9, 0.4, 0.6]), np.array([0.5, 0.1])) == pytest.approx(5 / 6)
    assert auroc(np.array([1.0, 2.0]), np.array([1.0, 0.0])) == pytest.approx(0.875)  # a tie
    assert auroc(np.arange(10) + 10.0, np.arange(10)) == 1.0
    assert auroc(np.arange(10), np.arange(10) + 10.0) == 0.0


def test_generated_sets_have_the_test_shape_and_range_and_are_seeded():
    x = torch.rand(12, 3, 16, 16)
    sets = generated_sets(x, seed=3)
    assert set(sets) == {"uniform", "constant", "interpolation", "dsprites", "textures"}
    for name, images in sets.items():
        assert images.shape == x.shape, name
        assert images.min() >= 0 and images.max() <= 1, name
    constant = sets["constant"].flatten(2)
    assert torch.equal(constant.amax(2), constant.amin(2))
    again = generated_sets(x, seed=3)
    assert all(torch.equal(sets[k], again[k]) for k in sets)



def test_mnist_gets_the_sklearn_digits_upsampled_as_an_ood_set():
    sets = dataset_sets("mnist5k", 28, None, limit=50)
    assert set(sets) == {"digits-upsampled"}
    up = sets["digits-upsampled"]
    assert up.shape == (50, 1, 28, 28) and up.min() >= 0 and up.max() <= 1
    # the same test digits as at 8x8: averaging the upsampled ones back recovers them
    small = load_dataset("digits", split="test", limit=50, seed=0).images.float() / 255.0
    back = torch.nn.functional.adaptive_avg_pool2d(up, 8)
    assert (back - small).abs().mean() < 0.1
    assert dataset_sets("digits", 8, None, limit=50) == {}

def test_user_ood_files_are_checked(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32))
    assert load_ood_file(good, (1, 8, 8)).shape == (5, 1, 8, 8)
    for name, array, message in (
            ("shape", np.zeros((5, 8, 8), np.float32), "shape"),
            ("range", np.full((2, 1, 8, 8), 2.0, np.float32), r"\[0, 1\]"),
            ("dtype", np.zeros((2, 1, 8, 8), np.uint8), "dtype")):
        path = tmp_path / f"{name}.npy"
        np.save(path, array)
        with pytest.raises(UsageError, match=message):
            load_ood_file(path, (1, 8, 8))


def test_cli_ood_writes_report_table_and_histograms(run, tmp_path, capsys):
    extra = tmp_path / "extra.npy"
    np.save(extra, np.zeros((7, 1, 8, 8), np.float32))
    out = tmp_path / "ood"
    assert main(["ood", "--run", str(run), "--out", str(out), "--ood-data", str(extra),
                 "--quiet"]) == 0
    report = json.loads((out / "ood.json").read_text())
    assert set(report["scores"]) == {"ebm-min", "ebm-lse", "softmax-msp", "softmax-energy"}
    for per_set in report["scores"].values():
        assert set(per_set) == {"uniform", "constant", "interpolation", "dsprites", "textures",
                                "file:extra"}
        assert all(0.0 <= v["auroc"] <= 1.0 for v in per_set.values())
    assert per_set["file:extra"]["n_out"] == 7
    assert (out / "ood.png").stat().st_size > 0
    assert "| ebm-min" in (out / "ood.md").read_text()
    assert "paper" in capsys.readouterr().out


def test_cli_ood_bad_file_is_one_line_and_writes_nothing(run, tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 1, 4, 4), np.float32))
    out = tmp_path / "nothing"
    assert main(["ood", "--run", str(run), "--out", str(out), "--ood-data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "shape (N, 1, 8, 8)" in err and err.count("\n") == 1
    assert not out.exists()


def test_unconditional_run_is_scored_by_minus_energy_beside_a_labelled_reference(tmp_path):
    out = tmp_path / "uncond"
    cfg = preset("digits", steps=2, conditional=False, checkpoint_every=1000,
                 snapshot_every=1000, sampler_steps=2)
    train_images(cfg, out, progress=False)
    report, raw = ood_report(out, progress=False)
    assert set(report["scores"]) == {"ebm", "softmax-msp", "softmax-energy"}
    assert raw["ebm/in"].shape == (report["n_in"],)
