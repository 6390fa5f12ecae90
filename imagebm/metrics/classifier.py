"""Domain scores for tiny image domains, from a small classifier trained on the domain.

For 8×8/16×16 digits or dSprites, Inception features are meaningless, so
``train_domain_classifier`` fits a small CNN on the domain's labelled data and ``domain_scores``
reports a Fréchet distance on its penultimate features and an IS analogue on its class
probabilities. These numbers depend on that classifier: they rank models on one domain with one
saved classifier, and are NOT comparable with published FID or IS values.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imagebm.metrics.fid import as_images, fid_from_stats, image_batches, inception_score
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.metrics import gaussian_stats
from trajebm.engine.modelfile import load_model_file, save_model_file

CLASSIFIER_FORMAT = "imagebm.domain_classifier"


@dataclass
class DomainClassifierConfig:
    """Input shape (C, H, W), number of classes, conv width and penultimate feature size."""

    image_shape: tuple[int, int, int]
    """(C, H, W) of the images it takes."""
    num_classes: int
    """Classes it predicts."""
    channels: int = 16
    """Width of the first convolution (the others are twice it)."""
    feature_dim: int = 128
    """Size of the penultimate features (the domain FID's)."""


class DomainClassifier(nn.Module):
    """Small CNN for one image domain: features(x) → (B, feature_dim), forward(x) → class logits.

    Two 3×3 convolutions, stride-2 ones down to at most 8×8, a max-pool to 4×4, a hidden
    layer (the features, after ReLU) and a linear head. Inputs move to the module's device.
    """

    def __init__(self, config: DomainClassifierConfig) -> None:
        super().__init__()
        self.config = config
        c, w = config.image_shape[0], config.channels
        layers: list[nn.Module] = [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU()]
        size = max(config.image_shape[1:])
        while size > 8:
            layers += [nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU()]
            size = (size + 1) // 2
        layers += [nn.AdaptiveMaxPool2d(4), nn.Flatten(), nn.Linear(32 * w, config.feature_dim),
                   nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (B, feature_dim) of [0, 1] images of the configured shape."""
        if tuple(x.shape[1:]) != tuple(self.config.image_shape):
            raise UsageError(f"this classifier takes {tuple(self.config.image_shape)} images, "
                             f"got {tuple(x.shape[1:])}")
        return self.body(x.to(self.head.weight.device, torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def save(self, path: str | os.PathLike) -> Path:
        """Write config and weights to one model file (atomically; loads with weights_only)."""
        return save_model_file(path, CLASSIFIER_FORMAT, self.config, self.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike,
             device: str | torch.device = "cpu") -> DomainClassifier:
        """A classifier written by ``save``, in eval mode on ``device``."""
        record = load_model_file(path, CLASSIFIER_FORMAT, "domain classifier")
        names = {f.name for f in dataclasses.fields(DomainClassifierConfig)}
        config = DomainClassifierConfig(**{k: v for k, v in record["config"].items()
                                           if k in names})
        config.image_shape = tuple(config.image_shape)
        model = cls(config)
        model.load_state_dict(record["state_dict"])
        return model.to(resolve_device(device)).eval()


def train_domain_classifier(images: Tensor | np.ndarray, labels: Tensor | np.ndarray,
                            num_classes: int, *, steps: int = 400, seed: int = 0,
                            batch_size: int = 64, lr: float = 3e-3,
                            device: str | torch.device | None = None,
                            config: DomainClassifierConfig | None = None) -> DomainClassifier:
    """Fit a DomainClassifier to labelled [0, 1] images with Adam; leaves global RNGs untouched."""
    x, y = torch.as_tensor(images), torch.as_tensor(labels).long()
    if x.dim() != 4:
        raise UsageError(f"images must be an (N, C, H, W) array, got shape {tuple(x.shape)}")
    if steps < 1:
        raise UsageError(f"steps must be at least 1, got {steps}")
    if y.shape != (len(x),):
        raise UsageError(f"need one label per image: {len(x)} images, labels of shape "
                         f"{tuple(y.shape)}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise UsageError(f"labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    config = config or DomainClassifierConfig(tuple(x.shape[1:]), num_classes)
    device = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DomainClassifier(config).to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        loss = F.cross_entropy(model(as_images(x[idx])), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def _classify(classifier: DomainClassifier, images: Tensor | np.ndarray,
              batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, F) and class probabilities (N, K) of ``images``, in float64."""
    feats, probs = [], []
    for chunk in image_batches(images, batch_size):
        f = classifier.features(chunk)
        feats.append(f.double().cpu())
        probs.append(torch.softmax(classifier.head(f).double(), 1).cpu())
    if not feats:
        raise UsageError("no images to score")
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def domain_scores(samples: Tensor | np.ndarray, reference: Tensor | np.ndarray,
                  classifier: DomainClassifier, *,
                  reference_labels: Tensor | np.ndarray | None = None, splits: int = 10,
                  batch_size: int = 500) -> dict[str, float | None]:
    """Domain FID and IS analogue of ``samples`` vs ``reference`` (not comparable to FID/IS).

    fid: Fréchet distance of the classifier's features; inception_score(_std): IS of its class
    probabilities on the samples, with the reference's own as the ceiling to compare with;
    accuracy_on_reference: the classifier's accuracy on the reference (None without labels).
    """
    was_training = classifier.training
    classifier.eval()
    try:
        f_s, p_s = _classify(classifier, samples, batch_size)
        f_r, p_r = _classify(classifier, reference, batch_size)
    finally:
        classifier.train(was_training)
    is_mean, is_std = inception_score(p_s, splits)
    accuracy = None
    if reference_labels is not None:
        y = np.asarray(reference_labels).reshape(-1)
        if len(y) != len(p_r):
            raise UsageError(f"{len(p_r)} reference images but {len(y)} reference labels")
        accuracy = float((p_r.argmax(1) == y).mean())
    return {
        "fid": fid_from_stats(gaussian_stats(f_s), gaussian_stats(f_r)),
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "reference_inception_score": inception_score(p_r, min(splits, len(p_r)))[0],
        "accuracy_on_reference": accuracy,
    }
