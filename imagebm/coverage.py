"""Mode coverage and memorisation checks of a trained image EBM (docs/paper.md §3).

Three checks, each with a number beside its figure:

* **Energy histograms of training vs test images** (the paper's overfitting check): a model
  that memorised its data gives training images clearly lower energy than test images. The
  energy is ``E(x, y)`` at the true label for conditional runs, ``E(x)`` otherwise; equal
  numbers of training and test images are scored. Numbers: both means and standard
  deviations, the gap in pooled standard deviations, the two-sample Kolmogorov–Smirnov
  statistic, and the histogram overlap (sum over 40 shared bins of the smaller of the two
  normalised histograms: 1 = identical, 0 = disjoint).
* **Nearest training neighbours of samples**, in pixel space and in the domain classifier's
  penultimate features (:func:`imagebm.evaluate.domain_classifier`; digits, MNIST, dSprites).
  Numbers: the median RMS pixel distance of samples to their nearest training image beside the
  same for test images (which cannot be copies), and the fraction of samples nearer to the
  training set than 95% of test images are (about 0.05 or less without memorisation).
* **Class coverage**: the domain classifier's predicted classes of the samples: the share of
  classes predicted at least once, the perplexity of the predicted class distribution over the
  number of classes (1 = uniform), and the same for as many test images (the floor).

Samples come from :func:`imagebm.sample.sample_images` with the paper's evaluation sampler
(``SampleConfig.paper``: sharp, low-temperature samples, the ones a memorisation check needs;
the default fresh samples carry the sampler's noise and are far from everything) or a given
``samples.npy``. ``imagebm coverage --run RUN --out DIR`` writes ``coverage.json``,
``energies.png``, ``neighbours.png`` (per row: a sample, its pixel-space neighbours, a blank,
its feature-space neighbours) and, when it sampled them, ``samples.npy``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import ks_2samp
from torch import Tensor

from imagebm.classify import test_split
from imagebm.evaluate import DOMAIN_DATASETS, domain_classifier, load_samples
from imagebm.grid import save_grid
from imagebm.metrics import DomainClassifier, nearest
from imagebm.models import ImageEBM
from imagebm.sample import SampleConfig, eval_mode, sample_images
from imagebm.train import (
    ImageRun,
    load_image_run,
    load_training_data,
    output_folder,
)
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.plotting import pyplot
from trajebm.engine.runinfo import atomic_save_npy, write_json, write_run_info

HIST_BINS = 40
NEAR_COPY_QUANTILE = 0.05


@dataclass
class CoverageConfig:
    """The checks' settings: how samples are drawn, neighbours shown, images scored."""

    sample: SampleConfig = field(default_factory=lambda: SampleConfig.paper(num=256))
    """How samples are drawn when none are given (the paper's evaluation sampler)."""
    neighbours: int = 5
    """Nearest training images per sample."""
    show: int = 8
    """Samples in neighbours.png."""
    limit: int = 2000
    """At most this many images per split are scored."""
    seed: int = 0
    """Seeds the images scored."""

    def __post_init__(self) -> None:
        if self.neighbours < 1 or self.show < 1 or self.limit < 2:
            raise UsageError("need neighbours >= 1, show >= 1 and limit >= 2")


@dataclass
class CoverageResult:
    """Energies of both splits, the samples, their nearest training images (N, k, C, H, W) in
    pixel and feature space (None without a domain classifier), and the numbers."""

    train_energies: np.ndarray
    test_energies: np.ndarray
    samples: Tensor
    pixel_neighbours: Tensor
    feature_neighbours: Tensor | None
    metrics: dict[str, Any]


@torch.no_grad()
def image_energies(model: ImageEBM, images: Tensor, labels: Tensor | None,
                   batch_size: int = 256) -> np.ndarray:
    """``E(x, y)`` (conditional, at ``labels``) or ``E(x)`` of every image, in eval mode."""
    device = next(model.parameters()).device
    out = []
    with eval_mode([model]):
        for i in range(0, len(images), batch_size):
            y = None if labels is None else labels[i:i + batch_size].to(device)
            out.append(model(images[i:i + batch_size].to(device), y).cpu())
    return torch.cat(out).double().numpy()


def histogram_overlap(a: np.ndarray, b: np.ndarray, bins: int = HIST_BINS) -> float:
    """Sum over shared bins of the smaller normalised histogram: 1 identical, 0 disjoint."""
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    pa, pb = np.histogram(a, edges)[0] / len(a), np.histogram(b, edges)[0] / len(b)
    return float(np.minimum(pa, pb).sum())


def energy_summary(train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Means, standard deviations, pooled-std gap, KS statistic and histogram overlap."""
    pooled = float(np.sqrt((train.var() + test.var()) / 2)) or 1.0
    ks = ks_2samp(train, test)
    return {"train_mean": float(train.mean()), "train_std": float(train.std()),
            "test_mean": float(test.mean()), "test_std": float(test.std()),
            "gap_in_std": float((test.mean() - train.mean()) / pooled),
            "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "histogram_overlap": histogram_overlap(train, test), "n": len(train)}


@torch.no_grad()
def _features(classifier: DomainClassifier, images: Tensor, batch_size: int = 1024) -> Tensor:
    return torch.cat([classifier.features(images[i:i + batch_size]).cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def class_coverage(classifier: DomainClassifier, images: Tensor) -> dict[str, Any]:
    """Predicted-class counts, share of classes seen, and perplexity / number of classes."""
    k = classifier.config.num_classes
    predicted = torch.cat([classifier(images[i:i + 1024]).argmax(1).cpu()
                           for i in range(0, len(images), 1024)])
    counts = torch.bincount(predicted, minlength=k).double()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    return {"class_counts": counts.long().tolist(), "covered": float((counts > 0).double().mean()),
            "perplexity_ratio": float(np.exp(entropy) / k)}


def _subset(n: int, limit: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]


def coverage(run: ImageRun | str | os.PathLike, samples: Tensor | np.ndarray | None = None,
             config: CoverageConfig | None = None, *,
             sample_labels: Tensor | np.ndarray | None = None,
             data_root: str | os.PathLike | None = None,
             cache_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
             progress: bool = True) -> CoverageResult:
    """Energy histograms (train vs test), samples' nearest neighbours, and class coverage.

    ``samples`` (N, C, H, W) in [0, 1] are drawn with ``config.sample`` when not given.
    """
    cfg = config or CoverageConfig()
    device = resolve_device(device)
    run = run if isinstance(run, ImageRun) else load_image_run(run, device)
    model, rc = run.model.to(device), run.config
    shape = (model.config.channels, model.config.image_size, model.config.image_size)
    if samples is not None:
        samples = torch.as_tensor(np.asarray(samples, dtype=np.float32))
        if samples.ndim != 4 or tuple(samples.shape[1:]) != shape or len(samples) < 2:
            raise UsageError(f"samples have shape {tuple(samples.shape)}; the run's images are "
                             f"(N >= 2, {', '.join(map(str, shape))})")
        if not bool(torch.isfinite(samples).all()) or samples.min() < 0 or samples.max() > 1:
            raise UsageError("samples must be finite and in [0, 1]")
    test = test_split(rc, data_root)
    train = load_training_data(rc, data_root)
    n = min(len(test), len(train), cfg.limit)
    te, tr = _subset(len(test), n, cfg.seed), _subset(len(train), n, cfg.seed + 1)
    conditional = model.conditional
    e_train = image_energies(model, train.float(tr), train.labels[tr] if conditional else None)
    e_test = image_energies(model, test.float(te), test.labels[te] if conditional else None)
    if samples is None:
        samples, labels, _ = sample_images(run, cfg.sample, device, progress)
    else:
        labels = None if sample_labels is None else torch.as_tensor(np.asarray(sample_labels))
    train_x = train.float()
    k = min(cfg.neighbours, len(train_x))
    pixel_d, pixel_i = nearest(samples, train_x, k)
    test_d, _ = nearest(test.float(te), train_x, 1)
    rms = float(np.sqrt(np.prod(shape)))
    sample_nn, test_nn = pixel_d[:, 0].numpy() / rms, test_d[:, 0].numpy() / rms
    threshold = float(np.quantile(test_nn, NEAR_COPY_QUANTILE))
    metrics: dict[str, Any] = {
        "run": str(run.path), "dataset": rc.dataset, "samples": len(samples),
        "config": asdict(cfg),
        "energy": "E(x, true label)" if conditional else "E(x)",
        "energies": energy_summary(e_train, e_test),
        "nearest_neighbours": {
            "sample_median_rms": float(np.median(sample_nn)),
            "test_median_rms": float(np.median(test_nn)),
            "near_copy_threshold_rms": threshold,
            "near_copy_fraction": float((sample_nn < threshold).mean())}}
    feature_nn = None
    if rc.dataset in DOMAIN_DATASETS:
        classifier = domain_classifier(rc, data_root, cache_dir, progress).to(device).eval()
        feats = _features(classifier, train_x)
        feature_nn = train_x[nearest(_features(classifier, samples), feats, k)[1]]
        metrics["classes"] = {"samples": class_coverage(classifier, samples),
                              "test_floor": class_coverage(classifier,
                                                           test.float(te[:len(samples)]))}
        if labels is not None and classifier.config.num_classes == model.config.num_classes:
            with torch.no_grad():
                hit = classifier(samples).argmax(1).cpu() == labels.view(-1)
            metrics["classes"]["label_accuracy"] = float(hit.double().mean())
    else:
        metrics["classes"] = (f"none: no domain classifier for {rc.dataset} "
                              f"(only for {', '.join(DOMAIN_DATASETS)})")
    return CoverageResult(e_train, e_test, samples, train_x[pixel_i], feature_nn, metrics)


def save_energy_histograms(result: CoverageResult, path: Path) -> Path:
    """Train and test energy histograms on shared bins, with the summary numbers as a title."""
    plt = pyplot()
    s = result.metrics["energies"]
    both = np.concatenate([result.train_energies, result.test_energies])
    bins = np.linspace(both.min(), both.max() if both.max() > both.min() else both.min() + 1,
                       HIST_BINS + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.hist(result.train_energies, bins=bins, alpha=0.5, density=True, label="train")
    ax.hist(result.test_energies, bins=bins, alpha=0.5, density=True, label="test")
    ax.set_xlabel(f"energy {result.metrics['energy']} (lower = more likely)")
    ax.set_title(f"overlap {s['histogram_overlap']:.3f}, KS {s['ks_statistic']:.3f}, "
                 f"gap {s['gap_in_std']:+.2f} std", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_neighbours(result: CoverageResult, show: int, path: Path) -> Path:
    """Rows: a sample, its pixel-space neighbours, a blank, its feature-space neighbours."""
    blank = torch.ones(1, *result.samples.shape[1:])
    rows = []
    for i in range(min(show, len(result.samples))):
        row = [result.samples[i:i + 1], result.pixel_neighbours[i]]
        if result.feature_neighbours is not None:
            row += [blank, result.feature_neighbours[i]]
        rows.append(torch.cat(row))
    save_grid(torch.cat(rows), path, nrow=len(rows[0]))
    return path


def coverage_to_folder(run_dir: str | os.PathLike, out_dir: str | os.PathLike,
                       config: CoverageConfig | None = None, *,
                       samples_file: str | os.PathLike | None = None,
                       data_root: str | os.PathLike | None = None,
                       device: str | torch.device | None = None,
                       progress: bool = True) -> tuple[Path, CoverageResult]:
    """:func:`coverage` of the samples in ``samples_file`` (or fresh ones) written to
    ``out_dir``: ``coverage.json``, ``energies.png``, ``neighbours.png``, ``run.json`` and,
    when it sampled them, ``samples.npy``; a run's own folder is refused."""
    cfg = config or CoverageConfig()
    out = output_folder(out_dir, "coverage")
    samples = labels = None
    if samples_file is not None:
        samples, labels = load_samples(samples_file)
    result = coverage(run_dir, samples, cfg, sample_labels=labels, data_root=data_root,
                      device=device, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "coverage.json", result.metrics)
    save_energy_histograms(result, out / "energies.png")
    save_neighbours(result, cfg.show, out / "neighbours.png")
    if samples is None:
        atomic_save_npy(result.samples.numpy().astype(np.float32), out / "samples.npy")
    write_run_info(out, cfg, cfg.seed, run=str(run_dir), samples=samples_file)
    return out, result
