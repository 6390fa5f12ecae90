"""Feature statistics, the Fréchet distance (FID) and the Inception score (IS) of image sets.

FID is the engine's Fréchet distance (:mod:`trajebm.engine.metrics`) between Gaussians fitted
to an extractor's features (Inception-v3's 2048-d pool_3 for :func:`imagebm.metrics.image_scores`,
a domain classifier's for :func:`imagebm.metrics.domain_scores`); reference statistics can be
cached in an .npz with keys ``mu`` and ``sigma`` (the format of pytorch-fid's and TTUR's stats
files). FID is biased upwards with few samples: compare runs only at equal sample counts
(published values usually use 50,000 samples).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from scipy.special import rel_entr
from torch import Tensor

from trajebm.engine.errors import UsageError
from trajebm.engine.metrics import frechet_distance, gaussian_stats
from trajebm.engine.runinfo import atomic_write_bytes

Stats = tuple[np.ndarray, np.ndarray]
Reference = Tensor | np.ndarray | Stats | str | os.PathLike
Extractor = Callable[[Tensor], Tensor | tuple[Tensor, ...]]


def as_images(images: Tensor | np.ndarray) -> Tensor:
    """``images`` as float32 (N, C, H, W) in [0, 1] (uint8 is divided by 255); else UsageError."""
    x = torch.as_tensor(images)
    if x.dim() != 4:
        raise UsageError(f"images must be an (N, C, H, W) array, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255
    x = x.float()
    if x.numel() and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
        raise UsageError(f"image values must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]")
    return x


def image_batches(images: Tensor | np.ndarray, batch_size: int) -> Iterator[Tensor]:
    """``images`` as float [0, 1] batches, converted one at a time (uint8 sets stay uint8)."""
    x = torch.as_tensor(images)
    if x.dim() != 4:
        raise UsageError(f"images must be an (N, C, H, W) array, got shape {tuple(x.shape)}")
    for chunk in x.split(batch_size):
        yield as_images(chunk)


def extract_features(images: Tensor | np.ndarray, extractor: Extractor,
                     batch_size: int = 500) -> np.ndarray:
    """``extractor``'s features of ``images`` (first item if it returns a tuple) as (N, F) float64.

    ``extractor`` maps a CPU batch of [0, 1] images to (B, F) features, or to a tuple whose first
    item they are (as InceptionFeatures does); it moves the batch to its device itself.
    """
    out = []
    with torch.no_grad():
        for chunk in image_batches(images, batch_size):
            feats = extractor(chunk)
            feats = feats[0] if isinstance(feats, tuple) else feats
            out.append(feats.detach().to("cpu", torch.float64).flatten(1))
    if not out:
        raise UsageError("no images to extract features from")
    return torch.cat(out).numpy()


def feature_stats(images: Tensor | np.ndarray, extractor: Extractor,
                  batch_size: int = 500) -> Stats:
    """Mean and covariance of ``extractor``'s features of ``images`` (cache with save_stats)."""
    return gaussian_stats(extract_features(images, extractor, batch_size))


def fid_from_stats(stats1: Stats, stats2: Stats) -> float:
    """Fréchet distance between two (mean, covariance) pairs, via trajebm.engine.metrics."""
    (mu1, sigma1), (mu2, sigma2) = stats1, stats2
    if np.shape(mu1) != np.shape(mu2) or np.shape(sigma1) != np.shape(sigma2):
        raise UsageError(f"statistics of different feature sizes ({np.shape(mu1)} vs "
                         f"{np.shape(mu2)}): were they computed with the same extractor?")
    return frechet_distance(mu1, sigma1, mu2, sigma2)


def save_stats(path: str | os.PathLike, stats: Stats) -> Path:
    """Write (mean, covariance) to an .npz with keys mu and sigma (pytorch-fid's layout)."""
    buf = io.BytesIO()
    np.savez(buf, mu=np.asarray(stats[0]), sigma=np.asarray(stats[1]))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_stats(path: str | os.PathLike) -> Stats:
    """(mean, covariance) from an .npz written by save_stats, pytorch-fid or TTUR."""
    try:
        with np.load(path) as data:
            return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    except (OSError, ValueError, KeyError) as err:
        raise UsageError(f"{path}: not an .npz of FID statistics with keys mu and sigma "
                         f"({type(err).__name__})") from None


def reference_stats(reference: Reference, extractor: Extractor, batch_size: int) -> Stats:
    """``reference`` as statistics: given as (mu, sigma), an .npz path, or images."""
    if isinstance(reference, (str, os.PathLike)):
        return load_stats(reference)
    if isinstance(reference, tuple):
        return np.asarray(reference[0]), np.asarray(reference[1])
    return feature_stats(reference, extractor, batch_size)


def fid(samples: Tensor | np.ndarray, reference: Reference, extractor: Extractor,
        batch_size: int = 500) -> float:
    """FID of ``samples`` against ``reference`` (images, (mu, sigma), or a stats .npz path)."""
    return fid_from_stats(feature_stats(samples, extractor, batch_size),
                          reference_stats(reference, extractor, batch_size))


def inception_score(probs: np.ndarray | Tensor, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) ‖ p(y))) on ``splits`` consecutive parts of (N, K) ``probs``: mean, std.

    p(y) is each part's mean prediction, as in the original code; std is over the parts.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise UsageError(f"probs must be an (N, K) array, got shape {p.shape}")
    if not 1 <= splits <= len(p):
        raise UsageError(f"need 1 <= splits <= N, got splits={splits} for N={len(p)}")
    if (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise UsageError("rows of probs must be probability vectors (softmax, not logits)")
    bounds = [i * len(p) // splits for i in range(splits + 1)]
    scores = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        part = p[lo:hi]
        scores.append(np.exp(rel_entr(part, part.mean(0, keepdims=True)).sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))
