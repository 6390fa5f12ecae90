"""The paper's image datasets, read from their publishers' own file formats into uint8 tensors.

Files live under a data root (``root``, else ``$IMAGEBM_DATA``, else ``~/.cache/imagebm``),
one folder per dataset, exactly as ``imagebm download NAME --root ROOT`` leaves them:

=====================  ==========================================================================
cifar10                ROOT/cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta
mnist                  ROOT/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
svhn                   ROOT/svhn/train_32x32.mat, test_32x32.mat (label 10 is the digit 0)
imagenet32             ROOT/imagenet32/Imagenet32_train_npz/train_data_batch_1..10.npz and
                       ROOT/imagenet32/Imagenet32_val_npz/val_data.npz (or all directly in
                       ROOT/imagenet32); manual download, image-net.org needs a login
imagenet               ROOT/imagenet/{train,val}/<wnid>/*.JPEG (ILSVRC-2012 in ImageFolder
                       layout; center-cropped and area-resized to 128 while decoding; manual
                       download; decoded into memory, so use ``limit`` on small machines)
dtd                    ROOT/dtd/images/<class>/*.jpg; test = labels/test1.txt, train = the rest
                       (every 5th image per class is test when labels/ is absent)
dsprites               ROOT/dsprites/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz (train only)
digits                 scikit-learn's bundled 8x8 digits; the last 20% are the test split
dsprites-procedural    rendered on the fly (:func:`render_sprites`); nothing to download
=====================  ==========================================================================

``image_size`` shrinks by area averaging and enlarges bilinearly, except that MNIST at 32 is
padded with 2 black pixels per side (the LeNet convention) so its pixels stay exact, and DTD
photos are center-cropped to a square and area-resized while decoding (default 32).
``limit`` keeps a seeded random subset (in the original order). dSprites' ``factors`` hold
the shape index (0 square, 1 ellipse, 2 heart) and the scale, orientation (radians), x and y
values; ``label_factor`` turns one factor's grid index into the labels (3, 6, 40, 32 or 32
classes), or several joined by ``+`` (``"shape+x"``) into one joint label, the index of the
combination (the first factor varies slowest). ``factor_bins`` groups a factor's grid into
that many contiguous, equal bins (``{"x": 2}``: left and right halves), which then stand for
the factor in labels and hold-outs; ``hold_out`` drops every image whose (binned) factors
match one of the given combinations (``({"shape": 2, "x": 0},)``: no heart on the left), so
a model can be asked for combinations it never saw. Both are deterministic and dSprites-only.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trajebm.engine.errors import UsageError

ROOT_ENV = "IMAGEBM_DATA"
SPLITS = ("train", "test")
DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
PROCEDURAL_DEFAULT_N = 10_000
SHAPES = ("square", "ellipse", "heart")
FACTOR_GRID: dict[str, np.ndarray] = {
    "shape": np.arange(3),
    "scale": np.linspace(0.5, 1.0, 6),
    "orientation": np.linspace(0.0, 2 * np.pi, 40),
    "x": np.linspace(0.0, 1.0, 32),
    "y": np.linspace(0.0, 1.0, 32),
}
_DSPRITES_COLUMNS = {"shape": 1, "scale": 2, "orientation": 3, "x": 4, "y": 5}
_SPRITE_RADIUS = 0.14
_SPRITE_MARGIN = 0.2
_SPRITE_REACH = 0.2
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_RESIZE_CHUNK = 2048


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives under the data root, what it holds, and where it comes from."""

    name: str
    folder: str
    files: dict[str, tuple[str, ...]]
    image_size: int
    channels: int
    num_classes: int
    needs_download: bool
    source: str
    manual: str | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.files)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (
        DatasetSpec(
            "cifar10", "cifar-10-batches-py",
            {"train": (*(f"data_batch_{i}" for i in range(1, 6)), "batches.meta"),
             "test": ("test_batch", "batches.meta")},
            32, 3, 10, True, "https://www.cs.toronto.edu/~kriz/cifar.html"),
        DatasetSpec(
            "mnist", "mnist",
            {"train": ("train-images-idx3-ubyte[.gz]", "train-labels-idx1-ubyte[.gz]"),
             "test": ("t10k-images-idx3-ubyte[.gz]", "t10k-labels-idx1-ubyte[.gz]")},
            28, 1, 10, True, "http://yann.lecun.com/exdb/mnist/"),
        DatasetSpec(
            "svhn", "svhn", {"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)},
            32, 3, 10, True, "http://ufldl.stanford.edu/housenumbers/"),
        DatasetSpec(
            "imagenet32", "imagenet32",
            {"train": tuple(f"Imagenet32_train_npz/train_data_batch_{i}.npz"
                            for i in range(1, 11)),
             "test": ("Imagenet32_val_npz/val_data.npz",)},
            32, 3, 1000, True, "https://image-net.org/download-images",
            manual="imagenet32 needs an image-net.org login, so it is not downloaded for you: "
            "log in at https://image-net.org/download-images, fetch Imagenet32_train_npz.zip "
            "and Imagenet32_val_npz.zip (under 'Downsampled ImageNet 32x32') and unzip both "
            "into {folder}"),
        DatasetSpec(
            "imagenet", "imagenet", {"train": ("train",), "test": ("val",)},
            128, 3, 1000, True, "https://image-net.org/download-images",
            manual="imagenet (ILSVRC-2012) needs an image-net.org login, so it is not "
            "downloaded for you: fetch the training and validation images and arrange them "
            "as {folder}/train/<wnid>/*.JPEG and {folder}/val/<wnid>/*.JPEG (the usual "
            "ImageFolder layout)"),
        DatasetSpec(
            "dtd", "dtd", {"train": ("images",), "test": ("images",)},
            32, 3, 47, True, "https://www.robots.ox.ac.uk/~vgg/data/dtd/"),
        DatasetSpec(
            "dsprites", "dsprites", {"train": (DSPRITES_FILE,)},
            64, 1, 0, True, "https://github.com/deepmind/dsprites-dataset"),
        DatasetSpec(
            "digits", "", {"train": (), "test": ()},
            8, 1, 10, False, "scikit-learn (sklearn.datasets.load_digits)"),
        DatasetSpec(
            "dsprites-procedural", "", {"train": (), "test": ()},
            64, 1, 0, False, "rendered by imagebm.datasets.render_sprites"),
    )
}


@dataclass
class ImageData:
    """A dataset split: uint8 images (N, C, H, W), optional int64 labels and dSprites factors."""

    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    name: str
    class_names: list[str] | None = None
    factors: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def float(self, idx: torch.Tensor | np.ndarray | slice | None = None) -> torch.Tensor:
        """The images (or those at ``idx``) as float32 in [0, 1]."""
        images = self.images if idx is None else self.images[idx]
        return images.float().div_(255.0)


def default_root() -> Path:
    """The data root used when none is given: ``$IMAGEBM_DATA``, else ``~/.cache/imagebm``."""
    return Path(os.environ.get(ROOT_ENV) or Path.home() / ".cache" / "imagebm")


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``, or a UsageError listing the known names."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[name]


def _locate(folder: Path, entry: str) -> Path | None:
    """The path of ``entry`` in ``folder``: ``x[.gz]`` also matches x.gz; ``sub/x`` also x."""
    base = entry.removesuffix("[.gz]")
    for name in (base, base + ".gz") if entry.endswith("[.gz]") else (base,):
        for path in (folder / name, folder / Path(name).name):
            if path.exists():
                return path
    return None


def missing_files(name: str, root: str | os.PathLike | None = None,
                  split: str = "train") -> list[str]:
    """The files of ``name``'s ``split`` that are not under ``root`` (empty when complete)."""
    spec = dataset_spec(name)
    folder = Path(root if root is not None else default_root()) / spec.folder
    return [entry for entry in spec.files.get(split, ()) if _locate(folder, entry) is None]


def _require(spec: DatasetSpec, root: Path, split: str) -> dict[str, Path]:
    """The paths of the split's files, or a UsageError saying which are missing and how to fetch."""
    folder = root / spec.folder
    found = {entry: _locate(folder, entry) for entry in spec.files[split]}
    missing = [entry for entry, path in found.items() if path is None]
    if missing:
        how = (spec.manual.format(folder=folder) if spec.manual else
               f"get them from {spec.source} with `imagebm download {spec.name} --root {root}`")
        raise UsageError(f"{spec.name} ({split}) needs {', '.join(missing)} in {folder}; {how}")
    return {entry: path for entry, path in found.items() if path is not None}


def _subset_index(n: int, limit: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of ``limit`` of ``n`` items (None: keep all)."""
    if limit is None or limit >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


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


def _read_cifar10(root: Path, split: str, opts: _Options) -> ImageData:
    spec = DATASETS["cifar10"]
    paths = _require(spec, root, split)
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
    return _image_data("cifar10", np.concatenate(images), np.concatenate(labels), class_names)


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


def _read_mnist(root: Path, split: str, opts: _Options) -> ImageData:
    spec = DATASETS["mnist"]
    paths = _require(spec, root, split)
    image_entry, label_entry = spec.files[split]
    images = _read_idx(paths[image_entry], 3)
    if images.shape[1:] != (28, 28):
        raise UsageError(f"{paths[image_entry]}: images are {images.shape[1:]}, expected 28 x 28")
    labels = _check_labels(paths[label_entry], _read_idx(paths[label_entry], 1), len(images), 0, 9)
    images = images[:, None]
    if opts.image_size == 32:
        images = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return _image_data("mnist", images, labels, [str(d) for d in range(10)])


def _read_svhn(root: Path, split: str, opts: _Options) -> ImageData:
    from scipy.io import loadmat  # lazy: scipy.io is needed for SVHN only
    from scipy.io.matlab import MatReadError

    path = next(iter(_require(DATASETS["svhn"], root, split).values()))
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
    return _image_data("svhn", x.transpose(3, 2, 0, 1), labels, [str(d) for d in range(10)])


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


def _read_imagenet32(root: Path, split: str, opts: _Options) -> ImageData:
    images, labels = [], []
    for path in _require(DATASETS["imagenet32"], root, split).values():
        data, lab = _load_npz(path, ("data", "labels"))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise UsageError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} "
                             f"{data.shape}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(_check_labels(path, lab, len(data), 1, 1000) - 1)
    return _image_data("imagenet32", np.concatenate(images), np.concatenate(labels))


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
                   opts: _Options) -> ImageData:
    """Decode class-folder image files (after the seeded ``limit`` subset) into ImageData."""
    idx = _subset_index(len(files), opts.limit, opts.seed)
    if idx is not None:
        files = [files[i] for i in idx]
    size = opts.image_size or DATASETS[name].image_size
    images = np.stack([_decode_square(f, size) for f in files]) if files else \
        np.zeros((0, 3, size, size), np.uint8)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[f.parent.name] for f in files], np.int64)
    return _image_data(name, images, labels, classes)


def _read_dtd(root: Path, split: str, opts: _Options) -> ImageData:
    spec = DATASETS["dtd"]
    classes, files = _dtd_files(_require(spec, root, split)["images"])
    return _decode_folder("dtd", classes, _dtd_split(root / spec.folder, files, split), opts)


def _read_imagenet(root: Path, split: str, opts: _Options) -> ImageData:
    spec = DATASETS["imagenet"]
    classes, files = _dtd_files(_require(spec, root, split)[spec.files[split][0]])
    return _decode_folder("imagenet", classes, files, opts)


FactorBins = Mapping[str, int]
"""Bins per dSprites factor (factors not named keep their full grid)."""
Combination = Mapping[str, int]
"""A value (bin index) per dSprites factor, e.g. ``{"shape": 2, "x": 0}``."""


def label_parts(label_factor: str) -> tuple[str, ...]:
    """The factors of a label spec: ``"shape"`` -> ("shape",), ``"shape+x"`` -> both."""
    parts = tuple(label_factor.split("+"))
    if any(f not in FACTOR_GRID for f in parts) or len(set(parts)) != len(parts):
        raise UsageError(f"unknown label_factor {label_factor!r}; choose from "
                         f"{', '.join(FACTOR_GRID)}, or distinct ones joined by '+'")
    return parts


def factor_classes(factor: str, bins: FactorBins | None = None) -> int:
    """How many values ``factor`` takes: its bins, else its grid size."""
    return (bins or {}).get(factor, len(FACTOR_GRID[factor]))


def factor_bin(factor: str, grid_index: np.ndarray, bins: FactorBins | None = None
               ) -> np.ndarray:
    """Grid indices of ``factor`` -> bin indices (contiguous equal groups of the grid)."""
    return np.asarray(grid_index) * factor_classes(factor, bins) // len(FACTOR_GRID[factor])


def factor_names(factor: str, bins: FactorBins | None = None) -> list[str]:
    """A name per value of ``factor``: the shape, the grid value, or a bin's value range."""
    grid = FACTOR_GRID[factor]
    values = list(SHAPES) if factor == "shape" else [f"{v:.3g}" for v in grid]
    groups: list[list[str]] = [[] for _ in range(factor_classes(factor, bins))]
    for i, value in enumerate(values):
        groups[int(factor_bin(factor, i, bins))].append(value)
    if factor == "shape":
        return ["|".join(g) for g in groups]
    return [g[0] if len(g) == 1 else f"{g[0]}-{g[-1]}" for g in groups]


def combination_index(combination: Combination, factors: Sequence[str],
                      bins: FactorBins | None = None) -> int:
    """The joint label of ``combination`` for the label spec ``"+".join(factors)``."""
    return int(_joint(combination, factors, bins))


def _joint(values: Mapping[str, int | np.ndarray], factors: Sequence[str],
           bins: FactorBins | None) -> np.ndarray:
    """Mixed-radix joint index of per-factor values (the first factor varies slowest)."""
    index = np.zeros((), np.int64)
    for f in factors:
        index = index * factor_classes(f, bins) + np.asarray(values[f], np.int64)
    return index


def check_factors(label_factor: str | None, bins: FactorBins | None,
                  hold_out: Sequence[Combination]) -> None:
    """UsageError unless the label spec, bins and held-out combinations are consistent."""
    if label_factor is not None:
        label_parts(label_factor)
    for f, k in (bins or {}).items():
        if f not in FACTOR_GRID or isinstance(k, bool) or not isinstance(k, Integral) \
                or not 1 <= k <= len(FACTOR_GRID[f]):
            raise UsageError(f"factor_bins: {f!r} must be a factor of {', '.join(FACTOR_GRID)} "
                             f"with 1 to its grid size bins, got {k!r}")
    for combo in hold_out:
        if not isinstance(combo, Mapping) or not combo:
            raise UsageError(f"hold_out entries are non-empty mappings factor -> value, got "
                             f"{combo!r}")
        for f, v in combo.items():
            if f not in FACTOR_GRID or isinstance(v, bool) or not isinstance(v, Integral) \
                    or not 0 <= v < factor_classes(f, bins):
                raise UsageError(f"hold_out {dict(combo)}: {f!r} must be a factor of "
                                 f"{', '.join(FACTOR_GRID)} with a value below its bins")


def _factor_labels(spec: str | None, indices: dict[str, np.ndarray],
                   bins: FactorBins | None = None
                   ) -> tuple[np.ndarray | None, list[str] | None]:
    """Labels (bin indices, or joint indices) and class names for ``label_factor``."""
    if spec is None:
        return None, None
    factors = label_parts(spec)
    values = {f: factor_bin(f, indices[f], bins) for f in factors}
    labels = _joint(values, factors, bins)
    names = [""]
    for f in factors:
        names = [f"{a}/{b}" if a else b for a in names for b in factor_names(f, bins)]
    return labels, names


def _kept(indices: dict[str, np.ndarray], bins: FactorBins | None,
          hold_out: Sequence[Combination]) -> np.ndarray | None:
    """Which items no held-out combination matches (None when nothing is held out)."""
    if not hold_out:
        return None
    n = len(next(iter(indices.values())))
    held = np.zeros(n, bool)
    for combo in hold_out:
        match = np.ones(n, bool)
        for f, v in combo.items():
            match &= factor_bin(f, indices[f], bins) == int(v)
        held |= match
    return ~held


def _read_dsprites(root: Path, split: str, opts: _Options) -> ImageData:
    path = _require(DATASETS["dsprites"], root, split)[DSPRITES_FILE]
    imgs, values, classes = _load_npz(path, ("imgs", "latents_values", "latents_classes"))
    n = len(imgs)
    if imgs.dtype != np.uint8 or imgs.shape[1:] != (64, 64) or (n and imgs.max() > 1):
        raise UsageError(f"{path}: 'imgs' must be 0/1 uint8 (N, 64, 64), got {imgs.dtype} "
                         f"{imgs.shape}")
    if values.shape != (n, 6) or classes.shape != (n, 6):
        raise UsageError(f"{path}: latents must be (N, 6) for N = {n} images, got "
                         f"{values.shape} and {classes.shape}")
    idx = _subset_index(n, opts.limit, opts.seed)
    if idx is not None:
        imgs, values, classes = imgs[idx], values[idx], classes[idx]
    keep = _kept({f: classes[:, c] for f, c in _DSPRITES_COLUMNS.items()}, opts.factor_bins,
                 opts.hold_out)
    if keep is not None:
        imgs, values, classes = imgs[keep], values[keep], classes[keep]
    imgs *= 255
    factors = {f: (classes[:, c].astype(np.int64) if f == "shape" else values[:, c])
               for f, c in _DSPRITES_COLUMNS.items()}
    indices = {f: classes[:, c] for f, c in _DSPRITES_COLUMNS.items()}
    labels, names = _factor_labels(opts.label_factor, indices, opts.factor_bins)
    return _image_data("dsprites", imgs[:, None], labels, names, factors)


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


def _read_digits(root: Path, split: str, opts: _Options) -> ImageData:
    values, labels = _digits_arrays()
    images = np.rint(values * (255 / 16)).astype(np.uint8)[:, None]
    n_train = len(images) - len(images) // 5
    part = slice(0, n_train) if split == "train" else slice(n_train, None)
    return _image_data("digits", images[part], labels[part], [str(d) for d in range(10)])


def render_sprites(shape: np.ndarray, scale: np.ndarray, orientation: np.ndarray,
                   x: np.ndarray, y: np.ndarray, image_size: int = 64,
                   supersample: int = 4) -> torch.Tensor:
    """dSprites-style white shapes on black, uint8 (N, 1, S, S), antialiased by supersampling.

    ``shape`` indexes :data:`SHAPES`; ``scale`` multiplies the base size (half-width 0.14 of
    the image at scale 1); ``orientation`` rotates by that many radians; ``x`` and ``y`` in
    [0, 1] place the centre between 0.2 and 0.8 of the width (``y`` grows downwards). This
    follows dSprites' factors, not its exact pixels. Only a window around each sprite is
    evaluated, one shape at a time, so 10,000 16x16 sprites take about a second.
    """
    cols = [torch.as_tensor(np.asarray(a, np.float32)).reshape(-1)
            for a in (shape, scale, orientation, x, y)]
    n = len(cols[0])
    if any(len(c) != n for c in cols):
        raise UsageError("shape, scale, orientation, x and y must have the same length")
    if image_size < 1 or supersample < 1:
        raise UsageError("image_size and supersample must be positive")
    s, ss = image_size, supersample
    w = min(s, math.ceil(2 * _SPRITE_REACH * s) + 2)
    offsets = (torch.arange(w * ss, dtype=torch.float32) + 0.5) / (s * ss)
    steps = torch.arange(w)
    out = torch.zeros((n, s, s), dtype=torch.uint8)
    chunk = max(1, 2**21 // (w * ss) ** 2)
    kinds, scales, thetas = cols[0].round().long(), cols[1], cols[2]
    centres = [_SPRITE_MARGIN + (1 - 2 * _SPRITE_MARGIN) * c for c in cols[3:]]
    for kind in range(len(SHAPES)):
        members = torch.nonzero(kinds == kind).flatten()
        for start in range(0, len(members), chunk):
            i = members[start:start + chunk]
            cx, cy = centres[0][i], centres[1][i]
            c0 = ((cx - _SPRITE_REACH) * s).floor().long().clamp(0, s - w)
            r0 = ((cy - _SPRITE_REACH) * s).floor().long().clamp(0, s - w)
            dx = (c0[:, None] / s + offsets - cx[:, None])[:, None, :]
            dy = (r0[:, None] / s + offsets - cy[:, None])[:, :, None]
            theta, r = thetas[i, None, None], _SPRITE_RADIUS * scales[i, None, None]
            cos, sin = torch.cos(theta), torch.sin(theta)
            inside = _inside(kind, (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r)
            cover = inside.float().view(-1, w, ss, w, ss).mean((2, 4))
            rows = (r0[:, None] + steps)[:, :, None]
            columns = (c0[:, None] + steps)[:, None, :]
            out[i[:, None, None], rows, columns] = cover.mul_(255).round_().to(torch.uint8)
    return out[:, None]


def _inside(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether points (u, v), in units of the sprite's half-width, lie inside shape ``kind``."""
    if kind == 0:
        return torch.maximum(u.abs(), v.abs()) <= 1
    if kind == 1:
        return u * u + 4 * v * v <= 1
    hx2, hy = (1.2 * u).square(), 0.1 - 1.2 * v
    t = hx2 + hy * hy - 1
    return t * t * t <= hx2 * hy * hy * hy


def procedural_dsprites(n: int = PROCEDURAL_DEFAULT_N, image_size: int = 64, seed: int = 0,
                        split: str = "train", label_factor: str | None = None,
                        factor_bins: FactorBins | None = None,
                        hold_out: Sequence[Combination] = ()) -> ImageData:
    """``n`` sprites with factors drawn uniformly from dSprites' grid (seeded; split-specific).

    Sprites matching a ``hold_out`` combination are dropped after drawing, so fewer than
    ``n`` remain; the others are the same sprites as without the hold-out.
    """
    check_factors(label_factor, factor_bins, hold_out)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    indices = {f: rng.integers(len(grid), size=n) for f, grid in FACTOR_GRID.items()}
    keep = _kept(indices, factor_bins, hold_out)
    if keep is not None:
        indices = {f: v[keep] for f, v in indices.items()}
    factors = {f: (indices[f] if f == "shape" else FACTOR_GRID[f][indices[f]])
               for f in FACTOR_GRID}
    images = render_sprites(*(factors[f] for f in FACTOR_GRID), image_size=image_size)
    labels, names = _factor_labels(label_factor, indices, factor_bins)
    return _image_data("dsprites-procedural", images, labels, names, factors)


def _image_data(name: str, images: np.ndarray | torch.Tensor, labels: np.ndarray | None,
                class_names: list[str] | None = None,
                factors: dict[str, np.ndarray] | None = None) -> ImageData:
    return ImageData(
        images=torch.as_tensor(np.ascontiguousarray(images)),
        labels=None if labels is None else torch.as_tensor(labels, dtype=torch.int64),
        num_classes=0 if labels is None else len(class_names or ()) or DATASETS[name].num_classes,
        name=name, class_names=class_names, factors=factors,
    )


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square uint8 images (N, C, H, W) resized to ``size``: area-averaged down, bilinear up."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    mode = "area" if size < images.shape[-1] else "bilinear"
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    for start in range(0, len(images), _RESIZE_CHUNK):
        part = images[start:start + _RESIZE_CHUNK].float()
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        resized = F.interpolate(part, size=(size, size), mode=mode, **kwargs)
        out[start:start + _RESIZE_CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


@dataclass(frozen=True)
class _Options:
    image_size: int | None
    limit: int | None
    seed: int
    label_factor: str | None
    factor_bins: FactorBins | None = None
    hold_out: Sequence[Combination] = ()


_READERS = {
    "cifar10": _read_cifar10, "mnist": _read_mnist, "svhn": _read_svhn,
    "imagenet32": _read_imagenet32, "imagenet": _read_imagenet, "dtd": _read_dtd,
    "dsprites": _read_dsprites, "digits": _read_digits,
}


def load_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train", *,
                 image_size: int | None = None, limit: int | None = None, seed: int = 0,
                 label_factor: str | None = None, factor_bins: FactorBins | None = None,
                 hold_out: Sequence[Combination] = ()) -> ImageData:
    """One split of dataset ``name`` as uint8 images, checked (see the module docstring).

    ``limit`` is a seeded random subset (for dsprites-procedural: how many to render, default
    10,000, before any hold-out); ``image_size`` resizes; ``label_factor`` picks the dSprites
    factor(s) to label by, ``factor_bins`` coarsens factors, ``hold_out`` drops combinations.
    """
    spec = dataset_spec(name)
    if split not in SPLITS:
        raise UsageError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split not in spec.files:
        raise UsageError(f"{name} has only a {' and '.join(spec.splits)} split; "
                         f"hold out part of it yourself")
    if image_size is not None and image_size < 1:
        raise UsageError(f"image_size must be positive, got {image_size}")
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be positive, got {limit}")
    for option, value in (("label_factor", label_factor), ("factor_bins", factor_bins),
                          ("hold_out", hold_out)):
        if value and name not in ("dsprites", "dsprites-procedural"):
            raise UsageError(f"{option} applies to dsprites only, not {name}")
    check_factors(label_factor, factor_bins, hold_out)
    if name == "dsprites-procedural":
        return procedural_dsprites(limit or PROCEDURAL_DEFAULT_N, image_size or spec.image_size,
                                   seed, split, label_factor, factor_bins, hold_out)
    opts = _Options(image_size, limit, seed, label_factor, factor_bins, hold_out)
    data = _READERS[name](Path(root if root is not None else default_root()), split, opts)
    idx = _subset_index(len(data), limit, seed)
    if idx is not None:
        keep = torch.from_numpy(idx)
        data.images = data.images[keep]
        data.labels = None if data.labels is None else data.labels[keep]
        data.factors = None if data.factors is None else {
            f: v[idx] for f, v in data.factors.items()}
    if image_size is not None:
        data.images = resize_images(data.images, image_size)
    return data
