"""Score a run's samples against held-out data: FID/IS, or domain scores for tiny domains.

Natural images (CIFAR-10, SVHN, ImageNet, DTD) use Inception-v3 features from the local
pytorch-fid weight file (:func:`imagebm.metrics.load_inception`). Digits, MNIST (full, or
mnist5k) and dSprites use a small domain classifier trained once per dataset/size/label
(cached under the data root's ``classifiers/``): a Fréchet distance on its features, an IS
analogue on its class probabilities and, for conditional samples, how often it recognises the
conditioning label.
Domain numbers rank models on one domain only; they are not comparable with published FID/IS.
Every score comes with its floor: the same score for held-out data of the same size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagebm.datasets import ImageData, dataset_spec, default_root, load_dataset
from imagebm.metrics import (
    DomainClassifier,
    domain_scores,
    image_scores,
    load_inception,
    train_domain_classifier,
)
from imagebm.presets import ImageTrainConfig
from imagebm.train import load_image_run
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import write_json

DOMAIN_DATASETS = ("digits", "mnist", "mnist5k", "dsprites", "dsprites-procedural")
CLASSIFIER_FACTOR = "shape"


def scoring_split(cfg: ImageTrainConfig, data_root: str | os.PathLike | None, split: str,
                  limit: int | None, seed: int, label_factor: str | None) -> ImageData:
    """``limit`` images of the run's ``split`` labelled by ``label_factor`` (a dataset without
    that split gives a differently seeded training subset instead)."""
    if split not in dataset_spec(cfg.dataset).splits:
        split, seed = "train", seed + 1
    return load_dataset(cfg.dataset, data_root, split, image_size=cfg.image_size, limit=limit,
                        seed=seed, label_factor=label_factor, factor_bins=cfg.factor_bins)


def classifier_factor(cfg: ImageTrainConfig) -> str | None:
    """The labels a domain classifier learns: the run's dSprites factor, else shape."""
    if cfg.dataset.startswith("dsprites"):
        return cfg.label_factor or CLASSIFIER_FACTOR
    return None


def domain_classifier(cfg: ImageTrainConfig, data_root: str | os.PathLike | None = None,
                      cache_dir: str | os.PathLike | None = None,
                      progress: bool = True) -> DomainClassifier:
    """The dataset's domain classifier: loaded from the cache, or trained once and cached."""
    factor = classifier_factor(cfg)
    size = cfg.model.image_size
    cache = Path(cache_dir) if cache_dir is not None else default_root() / "classifiers"
    bins = "".join(f"-{k}{v}bins" for k, v in sorted((cfg.factor_bins or {}).items()))
    path = cache / f"{cfg.dataset}-{size}px-{factor or 'labels'}{bins}.pt"
    if path.exists():
        return DomainClassifier.load(path)
    data = scoring_split(cfg, data_root, "train", 20_000, 0, factor)
    if data.labels is None:
        raise UsageError(f"{cfg.dataset} has no labels to train a domain classifier on")
    if progress:
        print(f"training the {cfg.dataset} domain classifier once (cached at {path})")
    classifier = train_domain_classifier(data.float(), data.labels, data.num_classes,
                                         steps=1500, seed=0)
    classifier.save(path)
    return classifier


def load_samples(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples (N, C, H, W) in [0, 1] and their labels from a ``samples.npy`` or its folder."""
    path = Path(path)
    file = path / "samples.npy" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"{file}: no such samples file (write one with `imagebm sample`)")
    samples = np.load(file)
    if samples.ndim != 4 or not np.issubdtype(samples.dtype, np.floating):
        raise UsageError(f"{file}: samples must be a float (N, C, H, W) array, got "
                         f"{samples.dtype} {samples.shape}")
    if not np.isfinite(samples).all() or samples.min() < 0 or samples.max() > 1:
        raise UsageError(f"{file}: samples must be finite and in [0, 1]")
    labels_file = file.with_name("labels.npy")
    labels = np.load(labels_file) if labels_file.is_file() else None
    return samples, labels


def score_samples(samples: np.ndarray | torch.Tensor, cfg: ImageTrainConfig, *,
                  labels: np.ndarray | torch.Tensor | None = None,
                  data_root: str | os.PathLike | None = None,
                  inception: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Scores of ``samples`` vs held-out data of ``cfg``'s dataset, with the held-out floor."""
    x = torch.as_tensor(np.asarray(samples, dtype=np.float32))
    expected = (cfg.model.channels, cfg.model.image_size, cfg.model.image_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise UsageError(f"samples have shape {tuple(x.shape)}, the run's images are "
                         f"(N, {', '.join(map(str, expected))})")
    n = len(x)
    if n < 10:
        raise UsageError(f"need at least 10 samples to score, got {n}")
    factor = classifier_factor(cfg)
    domain = cfg.dataset in DOMAIN_DATASETS
    ref = scoring_split(cfg, data_root, "test", n, 0, factor if domain else None)
    train = scoring_split(cfg, data_root, "train", len(ref), 2, factor)
    result: dict[str, Any] = {"dataset": cfg.dataset, "samples": n, "reference": len(ref)}
    if domain:
        classifier = domain_classifier(cfg, data_root, cache_dir, progress)
        result["kind"] = "domain classifier (not comparable with published FID/IS)"
        result["model"] = domain_scores(x, ref.float(), classifier,
                                        reference_labels=ref.labels)
        result["floor"] = domain_scores(train.float(), ref.float(), classifier)
        if labels is not None and cfg.conditional:
            with torch.no_grad():
                predicted = classifier(x).argmax(1).cpu().numpy()
            result["model"]["label_accuracy"] = float(
                (predicted == np.asarray(labels).reshape(-1)).mean())
    else:
        extractor = load_inception(inception)
        result["kind"] = "Inception-v3 (pytorch-fid weights)"
        result["model"] = image_scores(x, ref.float(), extractor)
        result["floor"] = image_scores(train.float(), ref.float(), extractor)
    return result


def score_to_file(run_dir: str | os.PathLike, samples: str | os.PathLike,
                  out: str | os.PathLike | None = None,
                  data_root: str | os.PathLike | None = None,
                  inception: str | os.PathLike | None = None,
                  progress: bool = True) -> tuple[dict[str, Any], Path]:
    """Score the samples file (or folder) ``samples`` of a run (:func:`score_samples`) and
    write the scores to ``out`` (default: ``scores.json`` beside the samples)."""
    run = load_image_run(run_dir)
    images, labels = load_samples(samples)
    result = score_samples(images, run.config, labels=labels, data_root=data_root,
                           inception=inception, progress=progress)
    where = Path(samples) if Path(samples).is_dir() else Path(samples).parent
    path = Path(out) if out else where / "scores.json"
    write_json(path, result)
    return result, path
