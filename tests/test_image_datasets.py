"""imagebm.datasets: every reader on tiny files in its real format, bad files, digits, sprites."""

from __future__ import annotations

import gzip
import pickle
import shutil
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from imagebm.datasets import (
    DATASETS,
    DSPRITES_FILE,
    FACTOR_GRID,
    ImageData,
    load_dataset,
    missing_files,
    render_sprites,
)
from trajebm.engine.errors import UsageError

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


def write_cifar(root: Path, per_batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A CIFAR-10 python folder under ``root`` (5 train batches + test batch of ``per_batch``)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]),
                         ("test", ["test_batch"])):
        images, labels = [], []
        for name in names:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            lab = rng.integers(0, 10, per_batch).tolist()
            batch = {"batch_label": name, "labels": lab, "data": data,
                     "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
            images.append(data.reshape(-1, 3, 32, 32))
            labels += lab
        out[split] = np.concatenate(images)
        out[f"{split}_labels"] = np.array(labels)
    meta = {"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the IDX format: magic, big-endian dimensions, data."""
    return bytes((0, 0, 0x08, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape) \
        + array.tobytes()


def write_mnist(root: Path) -> dict[str, np.ndarray]:
    """Tiny MNIST IDX files: the train pair gzipped, the test pair plain."""
    rng = np.random.default_rng(1)
    folder = root / "mnist"
    folder.mkdir(parents=True)
    out = {}
    for prefix, n, zipped in (("train", 5, True), ("t10k", 3, False)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            raw = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if zipped:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        out[prefix], out[f"{prefix}_labels"] = images, labels
    return out


def write_dsprites(root: Path, n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    grids = [np.ones(1)] + [FACTOR_GRID[f] for f in ("shape", "scale", "orientation", "x", "y")]
    classes = np.stack([rng.integers(len(g), size=n) for g in grids], axis=1)
    values = np.stack([g[c] for g, c in zip(grids, classes.T, strict=True)], axis=1)
    values[:, 1] += 1
    arrays = {"imgs": rng.integers(0, 2, (n, 64, 64), dtype=np.uint8),
              "latents_values": values, "latents_classes": classes}
    (root / "dsprites").mkdir(parents=True)
    np.savez_compressed(root / "dsprites" / DSPRITES_FILE, **arrays)
    return arrays


def test_cifar10_round_trips_exactly(tmp_path):
    want = write_cifar(tmp_path)
    train = load_dataset("cifar10", tmp_path)
    assert train.images.dtype == torch.uint8 and train.images.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(train.images.numpy(), want["train"])
    np.testing.assert_array_equal(train.labels.numpy(), want["train_labels"])
    assert train.labels.dtype == torch.int64 and train.num_classes == 10
    assert train.class_names == CIFAR_NAMES and train.name == "cifar10"
    test = load_dataset("cifar10", tmp_path, "test")
    np.testing.assert_array_equal(test.images.numpy(), want["test"])
    small = load_dataset("cifar10", tmp_path, image_size=16)
    area = want["train"].reshape(10, 3, 16, 2, 16, 2).mean((3, 5))
    np.testing.assert_array_equal(small.images.numpy(), np.round(area).astype(np.uint8))


def test_limit_is_a_seeded_subset_and_float_is_unit_range(tmp_path):
    want = write_cifar(tmp_path)
    a = load_dataset("cifar10", tmp_path, limit=4, seed=0)
    b = load_dataset("cifar10", tmp_path, limit=4, seed=0)
    assert len(a) == 4 and torch.equal(a.images, b.images)
    assert any(not torch.equal(load_dataset("cifar10", tmp_path, limit=4, seed=s).images,
                               a.images) for s in range(1, 4))
    rows = {img.tobytes(): lab for img, lab in zip(want["train"], want["train_labels"],
                                                   strict=True)}
    for img, lab in zip(a.images.numpy(), a.labels.tolist(), strict=True):
        assert rows[img.tobytes()] == lab
    assert len(load_dataset("cifar10", tmp_path, limit=100)) == 10
    x = a.float()
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(a.float(torch.tensor([1, 2])), a.images[1:3].float() / 255)


def test_missing_files_say_which_where_and_how(tmp_path):
    with pytest.raises(UsageError) as err:
        load_dataset("cifar10", tmp_path / "nowhere")
    msg = str(err.value)
    assert "data_batch_1" in msg and "batches.meta" in msg and "cifar-10-batches-py" in msg
    assert f"imagebm download cifar10 --root {tmp_path / 'nowhere'}" in msg
    assert "cs.toronto.edu" in msg
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UsageError, match=r"needs data_batch_3 in"):
        load_dataset("cifar10", tmp_path)
    assert missing_files("cifar10", tmp_path) == ["data_batch_3"]
    assert missing_files("cifar10", tmp_path, "test") == []
    with pytest.raises(UsageError, match="train_32x32.mat.*imagebm download svhn"):
        load_dataset("svhn", tmp_path)


@pytest.mark.parametrize("payload, message", [
    ({"labels": [0, 1]}, "no 'data' in the pickle"),
    ({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, r"\(N, 3072\)"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 12]}, "labels must be integers"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "1 labels for 2 images"),
    ([1, 2], "holds a list"),
    ({"data": Fraction(1, 2)}, "refusing to load fractions.Fraction"),
])
def test_malformed_cifar_batches_are_named(tmp_path, payload, message):
    write_cifar(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(pickle.dumps(payload))
    with pytest.raises(UsageError, match=message) as err:
        load_dataset("cifar10", tmp_path)
    assert str(bad) in str(err.value)


def test_truncated_pickle_is_reported(tmp_path):
    write_cifar(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(UsageError, match="test_batch: not a readable python pickle"):
        load_dataset("cifar10", tmp_path, "test")


def test_mnist_gzipped_and_plain_round_trip(tmp_path):
    want = write_mnist(tmp_path)
    train = load_dataset("mnist", tmp_path)
    np.testing.assert_array_equal(train.images.numpy()[:, 0], want["train"])
    np.testing.assert_array_equal(train.labels.numpy(), want["train_labels"])
    test = load_dataset("mnist", tmp_path, "test")
    assert test.images.shape == (3, 1, 28, 28) and test.num_classes == 10
    np.testing.assert_array_equal(test.images.numpy()[:, 0], want["t10k"])
    padded = load_dataset("mnist", tmp_path, "test", image_size=32).images.numpy()[:, 0]
    np.testing.assert_array_equal(padded[:, 2:30, 2:30], want["t10k"])
    assert padded.sum() == want["t10k"].sum(dtype=np.int64)
    assert load_dataset("mnist", tmp_path, image_size=14).images.shape == (5, 1, 14, 14)


def test_malformed_idx_files_are_named(tmp_path):
    want = write_mnist(tmp_path)
    folder = tmp_path / "mnist"
    images = folder / "t10k-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:-7])
    with pytest.raises(UsageError, match=r"t10k-images-idx3-ubyte: header says 3 x 28 x 28"):
        load_dataset("mnist", tmp_path, "test")
    images.write_bytes(idx_bytes(want["t10k_labels"]))
    with pytest.raises(UsageError, match="bad magic number 0x00000801; expected 0x00000803"):
        load_dataset("mnist", tmp_path, "test")
    images.write_bytes(good[:10])
    with pytest.raises(UsageError, match="truncated IDX file"):
        load_dataset("mnist", tmp_path, "test")
    images.write_bytes(good)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 2], np.uint8)))
    with pytest.raises(UsageError, match="2 labels for 3 images"):
        load_dataset("mnist", tmp_path, "test")
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UsageError, match="train-images-idx3-ubyte.gz: cannot read"):
        load_dataset("mnist", tmp_path)
    (folder / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UsageError, match=r"train-images-idx3-ubyte\[\.gz\]"):
        load_dataset("mnist", tmp_path)


def test_svhn_mat_round_trip_and_label_10_is_zero(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "svhn").mkdir()
    x = rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10]], np.uint8)
    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x, "y": y})
    data = load_dataset("svhn", tmp_path, "test")
    for i in range(4):
        np.testing.assert_array_equal(data.images[i].numpy(), x[:, :, :, i].transpose(2, 0, 1))
    assert data.labels.tolist() == [0, 1, 9, 0] and data.num_classes == 10
    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x[:, :, :2], "y": y})
    with pytest.raises(UsageError, match=r"test_32x32.mat: 'X' must be uint8 \(32, 32, 3, N\)"):
        load_dataset("svhn", tmp_path, "test")
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"garbage" * 30)
    with pytest.raises(UsageError, match="not a readable MATLAB file"):
        load_dataset("svhn", tmp_path, "test")


def test_imagenet32_npz_round_trip_with_1_indexed_labels(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "imagenet32"
    (folder / "Imagenet32_train_npz").mkdir(parents=True)
    batches = []
    for i in range(1, 11):
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        labels = rng.integers(1, 1001, 2)
        np.savez(folder / "Imagenet32_train_npz" / f"train_data_batch_{i}.npz", data=data,
                 labels=labels, mean=np.zeros(3072))
        batches.append((data, labels))
    np.savez(folder / "val_data.npz", data=batches[0][0], labels=np.array([1, 1000]))
    train = load_dataset("imagenet32", tmp_path)
    np.testing.assert_array_equal(
        train.images.numpy(), np.concatenate([d for d, _ in batches]).reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(train.labels.numpy(),
                                  np.concatenate([lab for _, lab in batches]) - 1)
    assert train.num_classes == 1000
    assert load_dataset("imagenet32", tmp_path, "test").labels.tolist() == [0, 999]
    np.savez(folder / "val_data.npz", data=batches[0][0])
    with pytest.raises(UsageError, match=r"val_data.npz: lacks 'labels'"):
        load_dataset("imagenet32", tmp_path, "test")
    (folder / "Imagenet32_train_npz" / "train_data_batch_7.npz").unlink()
    with pytest.raises(UsageError) as err:
        load_dataset("imagenet32", tmp_path)
    msg = str(err.value)
    assert "train_data_batch_7.npz" in msg and "image-net.org" in msg
    assert "Imagenet32_train_npz.zip" in msg and str(folder) in msg


def test_dtd_folder_with_partition_files(tmp_path):
    rng = np.random.default_rng(5)
    images = tmp_path / "dtd" / "images"
    pixels = {}
    for cls, names in (("banded", ["banded_0001.png", "banded_0002.png"]),
                       ("zigzag", ["zigzag_0001.png"])):
        (images / cls).mkdir(parents=True)
        for name in names:
            array = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
            Image.fromarray(array).save(images / cls / name)
            pixels[f"{cls}/{name}"] = array[:, 2:10].transpose(2, 0, 1)
    (tmp_path / "dtd" / "labels").mkdir()
    (tmp_path / "dtd" / "labels" / "test1.txt").write_text("banded/banded_0002.png\n")
    train = load_dataset("dtd", tmp_path, image_size=8)
    assert train.class_names == ["banded", "zigzag"] and train.labels.tolist() == [0, 1]
    np.testing.assert_array_equal(train.images[0].numpy(), pixels["banded/banded_0001.png"])
    np.testing.assert_array_equal(train.images[1].numpy(), pixels["zigzag/zigzag_0001.png"])
    test = load_dataset("dtd", tmp_path, "test", image_size=8)
    np.testing.assert_array_equal(test.images[0].numpy(), pixels["banded/banded_0002.png"])
    assert load_dataset("dtd", tmp_path).images.shape == (2, 3, 32, 32)
    (tmp_path / "dtd" / "labels" / "test1.txt").unlink()
    assert len(load_dataset("dtd", tmp_path, image_size=4)) == 3
    (images / "zigzag" / "zigzag_0002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UsageError, match="zigzag_0002.jpg: cannot decode image"):
        load_dataset("dtd", tmp_path)


def test_imagenet_folder_layout_and_missing_split(tmp_path):
    rng = np.random.default_rng(6)
    pixels = {}
    for split, wnid in (("train", "n01440764"), ("train", "n01443537"), ("val", "n01443537")):
        (tmp_path / "imagenet" / split / wnid).mkdir(parents=True)
        array = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(array).save(tmp_path / "imagenet" / split / wnid / "x.JPEG.png")
        pixels[split, wnid] = array.transpose(2, 0, 1)
    train = load_dataset("imagenet", tmp_path, image_size=6)
    assert train.class_names == ["n01440764", "n01443537"] and train.labels.tolist() == [0, 1]
    np.testing.assert_array_equal(train.images[1].numpy(), pixels["train", "n01443537"])
    assert load_dataset("imagenet", tmp_path, limit=1).images.shape == (1, 3, 128, 128)
    assert len(load_dataset("imagenet", tmp_path, "test", image_size=6)) == 1
    shutil.rmtree(tmp_path / "imagenet" / "val")
    with pytest.raises(UsageError, match="val"):
        load_dataset("imagenet", tmp_path, "test")


def test_dtd_jpeg_is_decoded_close_to_its_pixels(tmp_path):
    (tmp_path / "dtd" / "images" / "smooth").mkdir(parents=True)
    gradient = np.linspace(0, 255, 64)[None, :, None] * np.ones((64, 1, 3))
    Image.fromarray(gradient.astype(np.uint8)).save(
        tmp_path / "dtd" / "images" / "smooth" / "a.jpg", quality=95)
    data = load_dataset("dtd", tmp_path, image_size=16)
    want = gradient.reshape(16, 4, 16, 4, 3).mean((1, 3)).transpose(2, 0, 1)
    assert np.abs(data.images[0].numpy().astype(float) - want).max() < 8


def test_dsprites_npz_round_trip_factors_and_labels(tmp_path):
    want = write_dsprites(tmp_path)
    data = load_dataset("dsprites", tmp_path, label_factor="shape")
    np.testing.assert_array_equal(data.images.numpy()[:, 0], want["imgs"] * 255)
    assert data.labels.tolist() == want["latents_classes"][:, 1].tolist()
    assert data.num_classes == 3 and data.class_names == ["square", "ellipse", "heart"]
    np.testing.assert_array_equal(data.factors["shape"], want["latents_classes"][:, 1])
    np.testing.assert_array_equal(data.factors["x"], want["latents_values"][:, 4])
    x = load_dataset("dsprites", tmp_path, label_factor="x")
    assert x.num_classes == 32 and x.labels.tolist() == want["latents_classes"][:, 4].tolist()
    plain = load_dataset("dsprites", tmp_path, image_size=16)
    assert plain.labels is None and plain.num_classes == 0 and plain.images.shape[-1] == 16
    sub = load_dataset("dsprites", tmp_path, limit=3, seed=1, label_factor="scale")
    assert len(sub) == 3 and len(sub.factors["scale"]) == 3
    with pytest.raises(UsageError, match="dsprites has only a train split"):
        load_dataset("dsprites", tmp_path, "test")
    np.savez(tmp_path / "dsprites" / DSPRITES_FILE, imgs=want["imgs"])
    with pytest.raises(UsageError, match="lacks 'latents_values', 'latents_classes'"):
        load_dataset("dsprites", tmp_path)


def test_digits_split_and_values():
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert set(train.labels.tolist()) == set(range(10)) and test.num_classes == 10
    assert train.images.max() == 255 and train.images.min() == 0
    assert load_dataset("digits", image_size=16).images.shape == (1438, 1, 16, 16)


def _centre_and_spread(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Centre of mass (row, col) and variance along rows and columns of one image."""
    w = image[0].double().numpy()
    rows, cols = np.indices(w.shape)
    centre = np.array([(rows * w).sum(), (cols * w).sum()]) / w.sum()
    spread = np.array([((rows - centre[0]) ** 2 * w).sum(),
                       ((cols - centre[1]) ** 2 * w).sum()]) / w.sum()
    return centre, spread


def test_procedural_sprites_follow_their_factors():
    three = render_sprites([0, 1, 2], [1, 1, 1], [0, 0, 0], [0.5] * 3, [0.5] * 3, 32)
    mass = three.double().sum((1, 2, 3)).tolist()
    assert len({round(m / 255) for m in mass}) == 3 and min(mass) > 0
    small = render_sprites([0], [0.5], [0], [0.5], [0.5], 32)
    assert small.double().sum() < 0.3 * mass[0]
    left, right = render_sprites([2, 2], [1, 1], [0, 0], [0.0, 1.0], [0.5, 0.5], 32)
    (lr, lc), _ = _centre_and_spread(left)
    (rr, rc), _ = _centre_and_spread(right)
    assert rc - lc > 10 and abs(rr - lr) < 0.5
    flat, upright = render_sprites([1, 1], [1, 1], [0, np.pi / 2], [0.5] * 2, [0.5] * 2, 32)
    _, (fr, fc) = _centre_and_spread(flat)
    _, (ur, uc) = _centre_and_spread(upright)
    assert fc > 2 * fr and ur > 2 * uc
    assert abs(fc - ur) < 0.05 * fc


def test_procedural_dsprites_is_seeded_and_labelled():
    a = load_dataset("dsprites-procedural", image_size=16, limit=500, seed=3, label_factor="shape")
    b = load_dataset("dsprites-procedural", image_size=16, limit=500, seed=3, label_factor="shape")
    assert a.images.shape == (500, 1, 16, 16) and torch.equal(a.images, b.images)
    assert a.num_classes == 3 and a.labels.tolist() == a.factors["shape"].tolist()
    c = load_dataset("dsprites-procedural", image_size=16, limit=500, seed=4)
    test = load_dataset("dsprites-procedural", "unused", "test", image_size=16, limit=500, seed=3)
    assert not torch.equal(a.images, c.images) and not torch.equal(a.images, test.images)
    assert c.labels is None and c.num_classes == 0
    assert set(c.factors) == {"shape", "scale", "orientation", "x", "y"}
    x = load_dataset("dsprites-procedural", image_size=16, limit=50, label_factor="x")
    assert x.num_classes == 32 and int(x.labels.max()) < 32
    np.testing.assert_allclose(x.factors["x"], FACTOR_GRID["x"][x.labels.numpy()])
    assert load_dataset("dsprites-procedural", limit=2).images.shape == (2, 1, 64, 64)


def test_bad_arguments_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown dataset 'cifar'; choose from cifar10"):
        load_dataset("cifar")
    with pytest.raises(UsageError, match="split must be one of train, test"):
        load_dataset("digits", split="val")
    with pytest.raises(UsageError, match="label_factor applies to dsprites only"):
        load_dataset("digits", label_factor="shape")
    with pytest.raises(UsageError, match="unknown label_factor 'colour'"):
        load_dataset("dsprites-procedural", label_factor="colour")
    with pytest.raises(UsageError, match="limit must be positive"):
        load_dataset("digits", limit=0)
    with pytest.raises(UsageError, match="image_size must be positive"):
        load_dataset("digits", image_size=0)


def test_specs_are_consistent():
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.splits[0] == "train"
    assert isinstance(load_dataset("digits", limit=3), ImageData)
