"""The FID variant of Inception-v3 and the FID / IS of natural images.

``load_inception`` builds the FID variant of Inception-v3 (the TensorFlow graph
``inception-2015-12-05`` as ported by pytorch-fid) without torchvision, and loads pytorch-fid's
weight file from a local path; nothing is downloaded. FID compares Gaussians fitted to its
2048-d pool_3 features (:mod:`imagebm.metrics.fid`).
IS follows the code behind the paper's numbers (openai/improved-gan's ``inception_score``,
which Du & Mordatch's release uses; torch-fidelity does the same): softmax over all 1008
outputs of pool_3 · W, the fc layer's weights WITHOUT its bias, then exp(E_x KL(p(y|x) ‖ p(y)))
on 10 splits. Taking classes 1..1000 only, or keeping the bias, gives slightly different numbers.
As in pytorch-fid, images are resized to 299×299 with PyTorch's bilinear filter and scaled by
2x − 1; the TF graph resizes slightly differently and scales 0..255 pixels by (x − 128)/128, so
scores differ from TF ones in the decimals.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imagebm.metrics.fid import (
    Reference,
    fid_from_stats,
    image_batches,
    inception_score,
    reference_stats,
)
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.metrics import gaussian_stats

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILE
)
INCEPTION_ENV = "IMAGEBM_INCEPTION"
INCEPTION_SHA256_PREFIX = "6726825d"


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


def image_scores(samples: Tensor | np.ndarray, reference: Reference,
                 extractor: InceptionFeatures, *, splits: int = 10) -> dict[str, float]:
    """FID against ``reference`` and the Inception score of ``samples``, from one network pass."""
    pool, _ = extractor(samples)
    mean, std = inception_score(extractor.class_probs(pool), splits)
    distance = fid_from_stats(gaussian_stats(pool.numpy()),
                              reference_stats(reference, extractor, extractor.batch_size))
    return {"fid": distance, "inception_score": mean, "inception_score_std": std}
