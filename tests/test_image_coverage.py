"""Mode coverage: energy histograms of train vs test, nearest neighbours, class coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _image_fixtures import digits_classifier, tiny_digits_run

from imagebm.cli import main
from imagebm.coverage import CoverageConfig, coverage, histogram_overlap
from imagebm.datasets import load_dataset
from imagebm.metrics import nearest


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_digits_run(tmp_path_factory.mktemp("coverage") / "run")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A data root's classifier cache holding a quickly trained digits classifier."""
    folder = tmp_path_factory.mktemp("data") / "classifiers"
    digits_classifier(folder / "digits-8px-labels.pt")
    return folder


def test_histogram_overlap_and_nearest():
    a = np.random.default_rng(0).normal(size=2000)
    assert histogram_overlap(a, a) == pytest.approx(1.0)
    assert histogram_overlap(a, a + 100) == 0.0
    keys = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    d, i = nearest(torch.tensor([[0.9, 0.0]]), keys, 2, chunk=2)  # across chunks
    assert i.tolist() == [[2, 0]] and d[0].tolist() == pytest.approx([0.1, 0.9])


def test_training_images_as_samples_are_exact_copies(run, cache):
    train = load_dataset("digits")
    result = coverage(run, train.float()[:40], CoverageConfig(limit=100, neighbours=3),
                      cache_dir=cache, progress=False)
    nn = result.metrics["nearest_neighbours"]
    assert nn["sample_median_rms"] == pytest.approx(0.0, abs=1e-6)
    assert nn["near_copy_fraction"] == 1.0 and nn["test_median_rms"] > 0
    assert torch.equal(result.pixel_neighbours[:, 0], train.float()[:40])
    assert result.feature_neighbours.shape == (40, 3, 1, 8, 8)
    e = result.metrics["energies"]
    assert e["n"] == 100 and 0 <= e["histogram_overlap"] <= 1 and 0 <= e["ks_statistic"] <= 1
    assert 0 < result.metrics["classes"]["samples"]["covered"] <= 1


def test_cli_coverage_samples_and_writes_report(run, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGEBM_DATA", str(cache.parent))
    out = tmp_path / "cov"
    assert main(["coverage", "--run", str(run), "--out", str(out), "--num", "12", "--chunks",
                 "1", "--show", "3", "--quiet"]) == 0
    report = json.loads((out / "coverage.json").read_text())
    assert report["samples"] == 12 and report["energy"] == "E(x, true label)"
    assert "label_accuracy" in report["classes"]
    assert np.load(out / "samples.npy").shape == (12, 1, 8, 8)
    for name in ("energies.png", "neighbours.png"):
        assert (out / name).stat().st_size > 0
    assert "overlap" in capsys.readouterr().out
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((5, 1, 4, 4), np.float32))
    nothing = tmp_path / "nothing"
    assert main(["coverage", "--run", str(run), "--out", str(nothing), "--samples", str(bad),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "samples have shape" in err and err.count("\n") == 1 and not nothing.exists()
    assert main(["coverage", "--run", str(run), "--out", str(run), "--quiet"]) == 2
    assert "training run's folder" in capsys.readouterr().err
