"""The paper's image EBMs (docs/paper.md §1): spectrally normalised ResNets and the dSprites net.

Every architecture maps images ``(B, C, H, W)`` in [0, 1] (and, if class-conditional, labels) to
one energy per image. Convs other than the stem and the shortcuts carry a learned per-channel
input bias and output gain; a class-conditional model keeps one row of each per class and picks
rows by label (float label codes of shape ``(B, num_classes)`` mix rows linearly, so one-hot codes
equal integer labels). Spectral normalisation covers every conv and hidden linear layer but not
the scalar head; the second conv of each residual block starts near zero and is only scaled down
when its spectral norm exceeds 1 (:class:`BoundedSpectralNorm`).

Choices the paper leaves open, following the authors' TF1 release where it is clear: each
residual block is ``act(pool(conv2(act(conv1(h))) + skip(h)))`` (post-activation, avg-pool
after the sum), the skip being a spectrally normalised 1x1 conv only where the width changes;
the stem is a plain 3x3 conv and activation; convs in residual blocks have no own bias (the input
bias stands in); dropout, where used, follows the first conv of each residual block (in the
dSprites net, the hidden fc layer). The second conv starts at N(0, 1e-4^2), near enough to zero
that each block starts as its skip path, and clear of half-precision underflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from trajebm.engine.errors import UsageError

ACTIVATIONS = ("lrelu", "swish")
SECOND_CONV_INIT_STD = 1e-4


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: its layout at the default width, the sizes it takes, the paper's setting.

    ``blocks`` lists ``(filters, downsample)`` per residual block (``layout="resnet"``) or per
    stride-2 4x4 conv (``layout="strided"``, every one halves the size). Filter counts are for
    ``width``; a config's ``width`` override scales them all in proportion.
    """

    layout: str
    stem: int
    blocks: tuple[tuple[int, bool], ...]
    width: int
    min_size: int
    multiple: int
    paper_size: int
    paper_channels: int
    paper_classes: int
    description: str
    fc: int = 0
    activation: str = "lrelu"
    dropout: float = 0.0

    def supports(self, size: int) -> bool:
        """Whether images of ``size`` x ``size`` fit this layout."""
        return size >= self.min_size and size % self.multiple == 0

    def size_rule(self) -> str:
        """The accepted image sizes, in words."""
        if self.multiple > 1:
            return f"multiples of {self.multiple}"
        return f"at least {self.min_size}"


def _resnet(stem: int, blocks: str, **kwargs: Any) -> ArchSpec:
    """A ResNet spec from a block list such as ``"128d 128 256d"`` (d = downsample)."""
    layout = tuple((int(b.rstrip("d")), b.endswith("d")) for b in blocks.split())
    factor = 2 ** sum(down for _, down in layout)
    return ArchSpec("resnet", stem, layout, min_size=factor, multiple=factor, **kwargs)


ARCHITECTURES: dict[str, ArchSpec] = {
    "small": ArchSpec(
        "resnet", 32, ((32, True), (64, True)), width=32, min_size=4, multiple=1,
        paper_size=28, paper_channels=1, paper_classes=10,
        description="two residual blocks for 8x8-28x28 digits on a CPU (not a paper net; "
        "any size >= 4, odd sizes pool down by flooring)"),
    "dsprites": ArchSpec(
        "strided", 32, ((64, True), (128, True), (128, True), (128, True)), width=64,
        min_size=16, multiple=1, fc=128, paper_size=64, paper_channels=1, paper_classes=0,
        description="dSprites: 3x3 conv 32, stride-2 4x4 convs 64-128-128-128, fc 2048-128-1 at "
        "64x64 (fc input follows the image size)"),
    "resnet32": _resnet(
        128, "128d 128 256d 256 256d 256", width=128, paper_size=32, paper_channels=3,
        paper_classes=10, description="ResNet32: CIFAR-10, class-conditional in the paper"),
    "resnet32large": _resnet(
        128, "128d 128 128 256d 256 256 512d 512 512", width=128, dropout=0.5, paper_size=32,
        paper_channels=3, paper_classes=0,
        description="ResNet32Large: CIFAR-10 unconditional, dropout 0.5 in training"),
    "resnet32wider": _resnet(
        128, "256d 256 256 512d 512 512 1024d 1024 1024", width=256, paper_size=32,
        paper_channels=3, paper_classes=1000,
        description="ResNet32Wider: ImageNet32, ResNet32Large's layout at 256 base filters "
        "(release scripts used 192-256)"),
    "resnet128": _resnet(
        64, "64d 128d 256d 512d 512d 512", width=64, activation="swish", paper_size=128,
        paper_channels=3, paper_classes=1000,
        description="ResNet128: ImageNet 128x128, class-conditional, swish"),
}


def arch_spec(arch: str) -> ArchSpec:
    """The spec of ``arch``, or a :class:`UsageError` that lists the valid names."""
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


@dataclass
class ImageEBMConfig:
    """Architecture of an image EBM; :func:`paper_config` fills in the paper's setting."""

    arch: str = "small"
    """Architecture (ARCHITECTURES): small, dsprites, resnet32, resnet32large, resnet32wider,
    resnet128."""
    image_size: int = 32
    """Height and width of the images."""
    channels: int = 3
    """Image channels."""
    num_classes: int = 0
    """Classes of a class-conditional model (0: unconditional)."""
    activation: str = "lrelu"
    """lrelu | swish"""
    spectral_norm: bool = True
    """Spectrally normalise every conv and hidden linear layer."""
    width: int | None = None
    """Base filter count (None: the architecture's; the others scale in proportion)."""
    dropout: float = 0.0
    """Dropout after the first conv of each residual block (dSprites net: the hidden fc)."""

    def __post_init__(self) -> None:
        spec = arch_spec(self.arch)
        if not spec.supports(self.image_size):
            raise UsageError(f"{self.arch} takes image sizes that are {spec.size_rule()}, "
                             f"got {self.image_size}")
        if self.channels <= 0:
            raise UsageError(f"channels must be positive, got {self.channels}")
        if self.num_classes < 0:
            raise UsageError(f"num_classes must be >= 0 (0 = unconditional), got "
                             f"{self.num_classes}")
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"unknown activation {self.activation!r}; choose from "
                             f"{', '.join(ACTIVATIONS)}")
        if self.width is not None and self.width <= 0:
            raise UsageError(f"width must be positive, got {self.width}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout}")


def paper_config(arch: str, **overrides: Any) -> ImageEBMConfig:
    """``arch`` in the paper's setting (size, channels, classes, activation, dropout)."""
    spec = arch_spec(arch)
    settings: dict[str, Any] = {
        "arch": arch, "image_size": spec.paper_size, "channels": spec.paper_channels,
        "num_classes": spec.paper_classes, "activation": spec.activation,
        "dropout": spec.dropout}
    return ImageEBMConfig(**{**settings, **overrides})


class BoundedSpectralNorm(nn.Module):
    """Parametrization ``W / max(1, sigma(W))``: a weight is only scaled down, never up.

    sigma is estimated by power iteration on ``W`` reshaped to ``(out, -1)``: 15 steps at
    creation, then one per training-mode forward. ``_u`` and ``_v`` are buffers, so the estimate
    is saved and loaded with the model.
    """

    def __init__(self, weight: Tensor, n_power_iterations: int = 1, eps: float = 1e-12) -> None:
        super().__init__()
        mat = weight.detach().flatten(1)
        self.n_power_iterations = n_power_iterations
        self.eps = eps
        self.register_buffer("_u", F.normalize(mat.new_empty(mat.shape[0]).normal_(), dim=0,
                                               eps=eps))
        self.register_buffer("_v", F.normalize(mat.new_empty(mat.shape[1]).normal_(), dim=0,
                                               eps=eps))
        self._power_method(mat, 15)

    @torch.no_grad()
    def _power_method(self, mat: Tensor, iterations: int) -> None:
        for _ in range(iterations):
            self._u.copy_(F.normalize(torch.mv(mat, self._v), dim=0, eps=self.eps))
            self._v.copy_(F.normalize(torch.mv(mat.t(), self._u), dim=0, eps=self.eps))

    def forward(self, weight: Tensor) -> Tensor:
        mat = weight.flatten(1)
        if self.training:
            self._power_method(mat.detach(), self.n_power_iterations)
        sigma = torch.dot(self._u.clone(), torch.mv(mat, self._v.clone()))
        return weight / sigma.clamp_min(1.0)


def _normed(layer: nn.Module, enabled: bool, bounded: bool = False) -> nn.Module:
    """``layer`` with its weight spectrally normalised (bounded: only when the norm exceeds 1)."""
    if not enabled:
        return layer
    if bounded:
        parametrize.register_parametrization(layer, "weight", BoundedSpectralNorm(layer.weight))
        return layer
    return spectral_norm(layer)


def _activation(name: str) -> nn.Module:
    return nn.LeakyReLU(0.2) if name == "lrelu" else nn.SiLU()


def _per_example(table: Tensor, labels: Tensor | None) -> Tensor:
    """Rows of a ``(classes, C)`` table per example, shaped ``(B or 1, C, 1, 1)``."""
    if labels is None:
        rows = table[:1]
    elif labels.is_floating_point():
        rows = labels @ table
    else:
        rows = table[labels]
    return rows[:, :, None, None]


class ModConv(nn.Module):
    """A bias-free conv between a learned input bias and output gain, per class if conditional."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, classes: int,
                 normalise: bool, bounded: bool = False) -> None:
        super().__init__()
        conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2, bias=False)
        if bounded:
            nn.init.normal_(conv.weight, std=SECOND_CONV_INIT_STD)
        self.conv = _normed(conv, normalise, bounded)
        self.in_bias = nn.Parameter(torch.zeros(max(classes, 1), c_in))
        self.out_gain = nn.Parameter(torch.ones(max(classes, 1), c_out))

    def forward(self, x: Tensor, labels: Tensor | None) -> Tensor:
        x = x + _per_example(self.in_bias, labels)
        return self.conv(x) * _per_example(self.out_gain, labels)


class ResBlock(nn.Module):
    """``act(pool(conv2(act(drop(conv1(h)))) + skip(h)))``; conv2 starts near zero, bounded."""

    def __init__(self, c_in: int, c_out: int, downsample: bool, config: ImageEBMConfig) -> None:
        super().__init__()
        k, sn = config.num_classes, config.spectral_norm
        self.conv1 = ModConv(c_in, c_out, 3, 1, k, sn)
        self.conv2 = ModConv(c_out, c_out, 3, 1, k, sn, bounded=True)
        self.skip = (_normed(nn.Conv2d(c_in, c_out, 1, bias=False), sn) if c_in != c_out
                     else nn.Identity())
        self.drop = nn.Dropout(config.dropout)
        self.act = _activation(config.activation)
        self.downsample = downsample

    def forward(self, h: Tensor, labels: Tensor | None) -> Tensor:
        r = self.conv2(self.act(self.drop(self.conv1(h, labels))), labels)
        out = r + self.skip(h)
        if self.downsample:
            out = F.avg_pool2d(out, 2)
        return self.act(out)


class StridedBlock(nn.Module):
    """A stride-2 4x4 conv (input bias, output gain) and the activation: the dSprites layer."""

    def __init__(self, c_in: int, c_out: int, config: ImageEBMConfig) -> None:
        super().__init__()
        self.conv = ModConv(c_in, c_out, 4, 2, config.num_classes, config.spectral_norm)
        self.act = _activation(config.activation)

    def forward(self, h: Tensor, labels: Tensor | None) -> Tensor:
        return self.act(self.conv(h, labels))


class ImageEBM(nn.Module):
    """E(x) or E(x | y): images in [0, 1] -> one energy per image (docs/paper.md §1)."""

    def __init__(self, config: ImageEBMConfig) -> None:
        super().__init__()
        self.config = config
        spec = self.spec = ARCHITECTURES[config.arch]
        scale = (config.width or spec.width) / spec.width

        def filters(n: int) -> int:
            return max(1, round(n * scale))

        sn = config.spectral_norm
        c = filters(spec.stem)
        self.stem = _normed(nn.Conv2d(config.channels, c, 3, padding=1), sn)
        self.act = _activation(config.activation)
        blocks: list[nn.Module] = []
        size = config.image_size
        for n, down in spec.blocks:
            block = (ResBlock(c, filters(n), down, config) if spec.layout == "resnet"
                     else StridedBlock(c, filters(n), config))
            blocks.append(block)
            c, size = filters(n), size // 2 if down else size
        self.blocks = nn.ModuleList(blocks)
        if spec.layout == "strided":
            self.fc = nn.Sequential(_normed(nn.Linear(c * size * size, filters(spec.fc)), sn),
                                    _activation(config.activation), nn.Dropout(config.dropout))
            c = filters(spec.fc)
        else:
            self.fc = nn.Identity()
        self.head = nn.Linear(c, 1)
        self._checked_labels: tuple[Tensor | None, int] = (None, -1)

    @property
    def conditional(self) -> bool:
        return self.config.num_classes > 0

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        labels = self._check(x, labels)
        h = self.act(self.stem(x))
        for block in self.blocks:
            h = block(h, labels)
        h = h.sum((2, 3)) if self.spec.layout == "resnet" else h.flatten(1)
        return self.head(self.fc(h)).squeeze(-1)

    def class_pairs(self, x: Tensor, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Each image once per class (all, or ``classes``) and those labels: (B*K, ...), (B*K,)."""
        if self.config.num_classes == 0:
            raise UsageError("class energies need a class-conditional model (num_classes > 0)")
        ys = (torch.arange(self.config.num_classes, device=x.device) if classes is None
              else classes.to(x.device))
        n, k = x.shape[0], len(ys)
        return x.unsqueeze(1).expand(n, k, *x.shape[1:]).reshape(n * k, *x.shape[1:]), ys.repeat(n)

    def class_energies(self, x: Tensor, classes: Tensor | None = None) -> Tensor:
        """``E(x, y)`` for every class y (or each of ``classes``), shape (B, K): the logits are
        its negative."""
        return self(*self.class_pairs(x, classes)).view(x.shape[0], -1)

    def _check(self, x: Tensor, labels: Tensor | None) -> Tensor | None:
        """Raise :class:`UsageError` for inputs this model was not built for; labels as used."""
        cfg = self.config
        expected = (cfg.channels, cfg.image_size, cfg.image_size)
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise UsageError(f"{cfg.arch} model expects images of shape (B, {expected[0]}, "
                             f"{expected[1]}, {expected[2]}), got {got}")
        if not x.is_floating_point():
            raise UsageError(f"images must be floating point in [0, 1], got {x.dtype}")
        k, batch = cfg.num_classes, x.shape[0]
        if k == 0:
            if labels is not None:
                raise UsageError("this model is unconditional (num_classes=0); pass no labels")
            return None
        if labels is None:
            raise UsageError(f"this model is class-conditional (num_classes={k}); pass labels")
        if not isinstance(labels, Tensor):
            raise UsageError(f"labels must be a tensor, got {type(labels).__name__}")
        if labels.is_floating_point():
            if tuple(labels.shape) != (batch, k):
                raise UsageError(f"float label codes must have shape ({batch}, {k}), got "
                                 f"{tuple(labels.shape)}")
            return labels.to(x.dtype)
        if labels.dtype == torch.bool or labels.is_complex() or tuple(labels.shape) != (batch,):
            raise UsageError(f"labels must be integer class ids of shape ({batch},) or float "
                             f"codes of shape ({batch}, {k}); got {labels.dtype} of shape "
                             f"{tuple(labels.shape)}")
        if torch.compiler.is_compiling():  # a data-dependent check would split the compiled
            return labels.long()            # graph; the eager forward passes still check
        checked, version = self._checked_labels
        if labels is not checked or labels._version != version:  # chains reuse one tensor
            if bool(((labels < 0) | (labels >= k)).any()):
                raise UsageError(f"labels must be in [0, {k}), got values from "
                                 f"{int(labels.min())} to {int(labels.max())}")
            self._checked_labels = (labels, labels._version)
        return labels.long()


def build_model(config: ImageEBMConfig) -> ImageEBM:
    """A freshly initialised image EBM for ``config``."""
    return ImageEBM(config)
