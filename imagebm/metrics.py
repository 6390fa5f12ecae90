"""Image-sample metrics: FID and Inception score (IS), and domain scores for tiny image domains.

FID / IS. ``load_inception`` builds the FID variant of Inception-v3 (the TensorFlow graph
``inception-2015-12-05`` as ported by pytorch-fid) without torchvision, and loads pytorch-fid's
weight file from a local path; nothing is downloaded. FID is the engine's Fréchet distance
(:mod:`trajebm.engine.metrics`) between Gaussians fitted to the 2048-d pool_3 features;
reference statistics can be cached in an .npz with keys ``mu`` and ``sigma`` (the format of
pytorch-fid's and TTUR's stats files).
IS follows the code behind the paper's numbers (openai/improved-gan's ``inception_score``,
which Du & Mordatch's release uses; torch-fidelity does the same): softmax over all 1008
outputs of pool_3 · W, the fc layer's weights WITHOUT its bias, then exp(E_x KL(p(y|x) ‖ p(y)))
on 10 splits. Taking classes 1..1000 only, or keeping the bias, gives slightly different numbers.
As in pytorch-fid, images are resized to 299×299 with PyTorch's bilinear filter and scaled by
2x − 1; the TF graph resizes slightly differently and scales 0..255 pixels by (x − 128)/128, so
scores differ from TF ones in the decimals. FID is biased upwards with few samples: compare runs
only at equal sample counts (published values usually use 50,000 samples).

Domain scores. For 8×8/16×16 digits or dSprites, Inception features are meaningless, so
``train_domain_classifier`` fits a small CNN on the domain's labelled data and ``domain_scores``
reports a Fréchet distance on its penultimate features and an IS analogue on its class
probabilities. These numbers depend on that classifier: they rank models on one domain with one
saved classifier, and are NOT comparable with published FID or IS values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import rel_entr
from torch import Tensor, nn

from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.metrics import frechet_distance, gaussian_stats
from trajebm.engine.modelfile import load_model_file, save_model_file
from trajebm.engine.runinfo import atomic_write_bytes

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILE
)
INCEPTION_ENV = "IMAGEBM_INCEPTION"
INCEPTION_SHA256_PREFIX = "6726825d"
CLASSIFIER_FORMAT = "imagebm.domain_classifier"

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


# ---------------------------------------------------------------- FID Inception-v3 network


class _ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as in TF) and ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    """3×3 stride-1 average over the valid pixels only (TF's padding), FID blocks' pool branch."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _MixedA(nn.Module):
    """35×35 block: 1×1, 5×5, double-3×3 and pooled branches."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], 1)


class _ReduceB(nn.Module):
    """35→17 reduction: strided 3×3, strided double-3×3 and max-pool branches."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _MixedC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (1×7 then 7×1)."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, **row)
        self.branch7x7_3 = _ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = _ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = _ConvBN(c7, 192, **row)
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            self.branch7x7dbl_5(self.branch7x7dbl_4(dbl)),
            self.branch_pool(_avg_pool(x)),
        ], 1)


class _ReduceD(nn.Module):
    """17→8 reduction: strided 3×3, strided 7×7-then-3×3 and max-pool branches."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(self.branch7x7x3_3(b7)),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _MixedE(nn.Module):
    """8×8 block with split 1×3 / 3×1 outputs; the last one of the TF graph max-pools."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3),
            self.branch_pool(pooled),
        ], 1)


class InceptionFeatures(nn.Module):
    """Frozen FID Inception-v3: [0, 1] images → (pool_3 features (N, 2048), logits (N, 1008)).

    Calling it takes any number of (N, 3 or 1, H, W) images on any device (grayscale is repeated
    to 3 channels), runs them in batches of ``batch_size`` on the module's device without
    gradients, and returns CPU float32 tensors. Its state_dict keys are pytorch-fid's.
    """

    def __init__(self, batch_size: int = 50) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _MixedA(192, 32)
        self.Mixed_5c = _MixedA(256, 64)
        self.Mixed_5d = _MixedA(288, 64)
        self.Mixed_6a = _ReduceB(288)
        self.Mixed_6b = _MixedC(768, 128)
        self.Mixed_6c = _MixedC(768, 160)
        self.Mixed_6d = _MixedC(768, 160)
        self.Mixed_6e = _MixedC(768, 192)
        self.Mixed_7a = _ReduceD(768)
        self.Mixed_7b = _MixedE(1280, max_pool=False)
        self.Mixed_7c = _MixedE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Always stay in eval mode: batch norm must use the stored TF statistics."""
        return super().train(False)

    def pool_features(self, x: Tensor) -> Tensor:
        """pool_3 features of a prepared batch: 3 channels in [0, 1] on the module's device."""
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return x.mean((2, 3))

    @torch.no_grad()
    def forward(self, images: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        shape = torch.as_tensor(images).shape
        if len(shape) == 4 and shape[1] not in (1, 3):
            raise UsageError(f"Inception takes 1- or 3-channel images, got {shape[1]} channels")
        device = self.fc.weight.device
        pools, logits = [], []
        for chunk in image_batches(images, self.batch_size):
            pool = self.pool_features(chunk.to(device).expand(-1, 3, -1, -1))
            pools.append(pool.float().cpu())
            logits.append(self.fc(pool).float().cpu())
        if not pools:
            return torch.empty(0, 2048), torch.empty(0, 1008)
        return torch.cat(pools), torch.cat(logits)

    @torch.no_grad()
    def class_probs(self, pool: Tensor) -> Tensor:
        """IS class probabilities: softmax of pool_3 · Wᵀ over all 1008 outputs, no bias."""
        w = self.fc.weight.detach().to("cpu", torch.float64)
        return torch.softmax(pool.to(torch.float64) @ w.T, dim=1)


def inception_path(path: str | os.PathLike | None = None) -> Path:
    """Where the weights are read from: ``path``, else $IMAGEBM_INCEPTION, else ~/.cache/imagebm."""
    if path is None:
        path = os.environ.get(INCEPTION_ENV) or default_inception_path()
    path = Path(path).expanduser()
    return path / INCEPTION_FILE if path.is_dir() else path


def default_inception_path() -> Path:
    """~/.cache/imagebm/pt_inception-2015-12-05-6726825d.pth, the place looked in last."""
    return Path.home() / ".cache" / "imagebm" / INCEPTION_FILE


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_inception(path: str | os.PathLike | None = None, *,
                   device: str | torch.device | None = None,
                   batch_size: int = 50) -> InceptionFeatures:
    """The FID Inception-v3 with pytorch-fid's weights from a local file (see ``inception_path``).

    A missing, unreadable or mismatched file is a UsageError saying what to fetch; a file that
    loads but is not the published one (SHA-256 not starting 6726825d) only warns, since its
    scores are then not comparable with published ones.
    """
    path = inception_path(path)
    if not path.is_file():
        raise UsageError(
            f"Inception weights not found at {path}: download {INCEPTION_URL} and save it as "
            f"{default_inception_path()}, or set {INCEPTION_ENV}=/path/to/{INCEPTION_FILE}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UsageError(f"{path}: not a readable PyTorch weight file ({type(err).__name__}); "
                         f"re-download {INCEPTION_URL}") from None
    net = InceptionFeatures(batch_size)
    expected = net.state_dict()
    if not isinstance(state, dict):
        raise UsageError(f"{path}: holds a {type(state).__name__}, not a state_dict; "
                         f"expected pytorch-fid's {INCEPTION_FILE} from {INCEPTION_URL}")
    for key, value in expected.items():  # files saved before torch 0.4.1 lack BN batch counters
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, value)
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshaped = sorted(k for k in expected.keys() & state.keys()
                       if not isinstance(state[k], Tensor) or state[k].shape != expected[k].shape)
    if missing or unexpected or misshaped:
        example = (missing or unexpected or misshaped)[0]
        raise UsageError(
            f"{path}: not pytorch-fid's FID Inception-v3 weights ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped tensors, "
            f"e.g. {example!r}); fetch {INCEPTION_URL}"
        )
    net.load_state_dict(state, strict=True)
    if not _sha256(path).startswith(INCEPTION_SHA256_PREFIX):
        warnings.warn(f"{path} loads as the FID Inception-v3 but is not pytorch-fid's published "
                      f"file (SHA-256 does not start {INCEPTION_SHA256_PREFIX}); its FID and IS "
                      "are not comparable with published values", UserWarning, stacklevel=2)
    return net.to(resolve_device(device))


# ---------------------------------------------------------------- FID and IS


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


def _reference_stats(reference: Reference, extractor: Extractor, batch_size: int) -> Stats:
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
                          _reference_stats(reference, extractor, batch_size))


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


def image_scores(samples: Tensor | np.ndarray, reference: Reference,
                 extractor: InceptionFeatures, *, splits: int = 10) -> dict[str, float]:
    """FID against ``reference`` and the Inception score of ``samples``, from one network pass."""
    pool, _ = extractor(samples)
    mean, std = inception_score(extractor.class_probs(pool), splits)
    distance = fid_from_stats(gaussian_stats(pool.numpy()),
                              _reference_stats(reference, extractor, extractor.batch_size))
    return {"fid": distance, "inception_score": mean, "inception_score_std": std}


# ---------------------------------------------------------------- domain classifier


@dataclass
class DomainClassifierConfig:
    """Input shape (C, H, W), number of classes, conv width and penultimate feature size."""

    image_shape: tuple[int, int, int]
    num_classes: int
    channels: int = 16
    feature_dim: int = 128


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


def nearest(queries: Tensor, keys: Tensor, k: int = 1, visible: Tensor | None = None,
            allowed: Tensor | None = None, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Euclidean distances and indices (each (N, k), nearest first) of the ``k`` nearest
    ``keys`` rows of each query row, searched ``chunk`` keys at a time in float64.

    ``visible`` (0/1, the queries' shape) measures each query on its visible elements only
    (restoring from what is left of an image); ``allowed`` (N, M) bool restricts the candidates
    (e.g. to the query's class; a query with fewer than ``k`` gets inf distances).
    """
    q = queries.flatten(1).double()
    v = torch.ones_like(q) if visible is None else visible.flatten(1).double()
    qv = q * v
    q_norm = (qv * q).sum(1, keepdim=True)
    dists, idx = [], []
    for start in range(0, len(keys), chunk):
        x = keys[start:start + chunk].flatten(1).double()
        d = (q_norm - 2 * qv @ x.T + v @ (x * x).T).clamp_min(0)
        if allowed is not None:
            d = d.masked_fill(~allowed[:, start:start + chunk], float("inf"))
        value, i = d.topk(min(k, d.shape[1]), dim=1, largest=False)
        dists.append(value)
        idx.append(i + start)
    d, i = torch.cat(dists, 1), torch.cat(idx, 1)
    order = d.argsort(dim=1, stable=True)[:, :k]
    return d.gather(1, order).sqrt(), i.gather(1, order)
