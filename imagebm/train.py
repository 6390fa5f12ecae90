"""Train an image EBM with trajebm's one trainer, replay buffer and Langevin sampler.

Several processes or GPUs: ``torchrun --nproc_per_node N $(which imagebm) train ...``; every
rank keeps its own replay buffer and data order, gradients are averaged (``trajebm.engine.train``).

A run is described by one :class:`ImageTrainConfig`: the engine's :class:`TrainConfig` (steps,
optimiser, Langevin sampler, seed, checkpoints, snapshots, logging) under ``train``, plus what
only images need. :data:`PRESETS` holds the paper's settings (PAPER.md §1) and small CPU
settings. ``imagebm train --preset NAME --out RUN`` calls :func:`train_images`, which writes
``run.json``, ``checkpoint.pt`` (exact resume), ``metrics.csv``, ``snapshots/`` (weights for the
historical ensemble), ``model.pt`` (final weights + config, in the engine's model-file format)
and ``buffer.png`` (a grid of the latest replay-buffer samples).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from imagebm.datasets import ImageData, check_factors, load_dataset
from imagebm.grid import save_grid
from imagebm.models import ImageEBM, ImageEBMConfig, build_model
from trajebm.engine.buffer import NoiseInit, ReplayBuffer, uniform_init
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.modelfile import load_model_file, save_model_file
from trajebm.engine.runinfo import run_folder, write_run_info
from trajebm.engine.sampling import LangevinConfig
from trajebm.engine.train import (
    TensorBatches,
    TrainConfig,
    Trainer,
    init_distributed,
    read_checkpoint,
    world,
)

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FORMAT = "imagebm-model"
INITS = ("uniform", "dsprites")
SAMPLE_TEMPERATURE = 1000.0
"""Fresh-sample temperature of persistent runs (noise x sqrt(1000) ~ 0.16 per step): at the
training chain's own temperature, chains from noise on the fixed final weights fall into about
one image per class; at this one they stay diverse (measured on ``digits`` and ``dsprites-16``,
benchmarks/quality_fresh_samples.py)."""


def image_training(**overrides: Any) -> TrainConfig:
    """The engine's TrainConfig with image-run defaults: long runs, snapshots every 300 steps."""
    return TrainConfig(**{"steps": 100_000, "snapshot_every": 300, "checkpoint_every": 500,
                          **overrides})


@dataclass
class ImageTrainConfig:
    """A run: the trainer's settings (``train``) plus data, architecture, buffer, eval sampler.

    ``init`` is where fresh chains start: ``uniform`` U(0, 1) (natural images), or ``dsprites``
    0.5 + 0.5 N(0, 1) clamped to [0, 1] (PAPER.md §1). ``replay_prob`` is the share of chains
    continued from the replay buffer (the paper's 0.95; 0 trains by short-run chains from noise,
    :func:`short_run`). The ``eval_*`` fields are the run's sampler for fresh samples
    (:func:`imagebm.sample.sample_images`): ``eval_chunks`` chunks of ``eval_chunk_steps``
    steps with gradient clip ``eval_grad_clip``, ``eval_reinit`` of the chains restarted after
    each chunk, ``eval_temperature`` times the training chain's noise variance (for persistent
    runs :data:`SAMPLE_TEMPERATURE`, where chains from noise do not collapse).
    ``class_weight`` > 0 adds that times the cross-entropy of the logits ``-E(x, y)`` on the
    data to the contrastive loss (the hybrid of JEM, Grathwohl et al. 2020: log p(y | x)
    beside log p(x | y)); 0 is the paper's purely generative training. ``label_factor``,
    ``factor_bins`` and ``hold_out`` label dSprites by one factor or a joint combination,
    coarsen factors into bins and leave combinations out of the training data
    (:mod:`imagebm.datasets`).
    """

    dataset: str = "digits"
    image_size: int | None = None
    label_factor: str | None = None
    factor_bins: dict[str, int] | None = None
    hold_out: tuple[dict[str, int], ...] = ()
    limit: int | None = None
    conditional: bool = False
    model: ImageEBMConfig = field(default_factory=ImageEBMConfig)
    batch_size: int = 128
    buffer_size: int = 10_000
    replay_prob: float = 0.95
    init: str = "uniform"
    eval_chunks: int = 10
    eval_chunk_steps: int = 20
    eval_grad_clip: float | None = 0.05
    eval_reinit: float = 0.01
    eval_temperature: float = SAMPLE_TEMPERATURE
    class_weight: float = 0.0
    train: TrainConfig = field(default_factory=image_training)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ImageEBMConfig(**self.model)
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        if self.init not in INITS:
            raise UsageError(f"init must be one of {', '.join(INITS)}, not {self.init!r}")
        if self.batch_size < 1 or self.buffer_size < 1 or self.train.lr <= 0:
            raise UsageError("batch_size, buffer_size and lr must be positive")
        if self.class_weight < 0 or (self.class_weight > 0 and not self.conditional):
            raise UsageError("class_weight must be >= 0, and > 0 only for a conditional model")
        if not 0.0 <= self.eval_reinit <= 1.0 or not 0.0 <= self.replay_prob <= 1.0:
            raise UsageError(f"eval_reinit and replay_prob must be in [0, 1], got "
                             f"{self.eval_reinit} and {self.replay_prob}")
        if self.eval_chunks < 1 or self.eval_chunk_steps < 1 or self.eval_temperature <= 0:
            raise UsageError("eval_chunks and eval_chunk_steps must be >= 1, eval_temperature "
                             "positive")
        self.hold_out = tuple(self.hold_out)
        check_factors(self.label_factor, self.factor_bins, self.hold_out)


def _cifar_sampler(**kw: Any) -> LangevinConfig:
    """PAPER.md §1 CIFAR-10 chains: 60 steps, lambda 10, sigma 0.005, clip 0.01, bounds [0, 1]."""
    return LangevinConfig(**{"steps": 60, "step_size": 10.0, "noise": 0.005, "grad_clip": 0.01,
                             **kw})


def _paper(**sampler: Any) -> TrainConfig:
    """Image-run training with PAPER.md §1 chains, ``sampler`` changing some of their settings."""
    return image_training(sampler=_cifar_sampler(**sampler))


def short_run(cfg: ImageTrainConfig) -> ImageTrainConfig:
    """``cfg`` trained by short-run chains from noise, sampled by that same chain.

    Every training chain starts from the init noise (``replay_prob`` 0; Nijkamp et al. 2019),
    and fresh samples are one chunk of the training chain itself (its steps and clip, no
    restarts, its temperature). A persistent run's energy is shaped only around its replay
    buffer, so chains from noise on its final weights fall into a few attractors per class; a
    short-run run is trained so that exactly this chain from noise lands on the data.
    """
    s = cfg.train.sampler
    return replace(cfg, replay_prob=0.0, eval_chunks=1, eval_chunk_steps=s.steps,
                   eval_grad_clip=s.grad_clip, eval_reinit=0.0, eval_temperature=s.temperature)


_DIGITS = ImageTrainConfig(
    dataset="digits", conditional=True, batch_size=128,
    model=ImageEBMConfig(arch="small", image_size=8, channels=1, width=16),
    train=image_training(steps=1500, lr=1e-3, sampler=_cifar_sampler(steps=15),
                         snapshot_every=100, checkpoint_every=250))

_DSPRITES16 = ImageTrainConfig(
    dataset="dsprites-procedural", image_size=16, label_factor="shape", limit=20_000,
    conditional=True, init="dsprites",
    model=ImageEBMConfig(arch="dsprites", image_size=16, channels=1, width=16),
    train=image_training(steps=1000, lr=1e-3, sampler=_cifar_sampler(steps=20, step_size=500.0),
                         snapshot_every=100, checkpoint_every=250))

PRESETS: dict[str, ImageTrainConfig] = {
    "cifar10-uncond": ImageTrainConfig(
        dataset="cifar10", model=ImageEBMConfig(arch="resnet32large", image_size=32, channels=3,
                                                dropout=0.5),
        train=_paper()),
    "cifar10-cond": ImageTrainConfig(
        dataset="cifar10", conditional=True,
        model=ImageEBMConfig(arch="resnet32", image_size=32, channels=3), train=_paper()),
    "imagenet32-cond": ImageTrainConfig(
        dataset="imagenet32", conditional=True, batch_size=32,
        model=ImageEBMConfig(arch="resnet32wider", image_size=32, channels=3), train=_paper()),
    "imagenet128-cond": ImageTrainConfig(
        dataset="imagenet", conditional=True, batch_size=16,
        model=ImageEBMConfig(arch="resnet128", image_size=128, channels=3, activation="swish"),
        train=_paper(steps=50, step_size=100.0, grad_clip=None)),
    "mnist": ImageTrainConfig(
        dataset="mnist", conditional=True,
        model=ImageEBMConfig(arch="small", image_size=28, channels=1), train=_paper()),
    **{f"dsprites-{factor}": ImageTrainConfig(
        dataset="dsprites", label_factor=factor, conditional=True, init="dsprites",
        model=ImageEBMConfig(arch="dsprites", image_size=64, channels=1),
        train=_paper(steps=20, step_size=500.0))
        for factor in ("shape", "scale", "orientation", "x", "y")},
    "digits": _DIGITS,
    "digits-hybrid": replace(_DIGITS, class_weight=1.0),
    "digits-shortrun": short_run(_DIGITS),
    "dsprites-16": _DSPRITES16,
    "dsprites-16-shortrun": short_run(_DSPRITES16),
}
"""Named settings. The paper's (PAPER.md §1) need a GPU and the dataset files; ``digits``,
``digits-hybrid`` (``digits`` plus the classification term, ``class_weight``) and
``dsprites-16`` are sized for a 2-core CPU (see README for their measured time and quality);
``*-shortrun`` are those trained by short-run chains (:func:`short_run`), whose fresh samples
do not collapse."""

IMAGE_FIELDS = frozenset(f.name for f in fields(ImageTrainConfig))
TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))


def preset(name: str, **overrides: Any) -> ImageTrainConfig:
    """A copy of the named preset with ``overrides`` applied; unknown names are errors.

    An override names a field of :class:`ImageTrainConfig` (``train`` replaces the trainer's
    settings whole) or of the engine's :class:`TrainConfig` (``steps``, ``lr``, ``sampler``,
    ``seed``, ...), which goes into ``train``.
    """
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    unknown = set(overrides) - IMAGE_FIELDS - TRAIN_FIELDS
    if unknown:
        raise UsageError(f"unknown setting(s) {', '.join(sorted(unknown))} for a preset")
    cfg = copy.deepcopy(PRESETS[name])
    image = {k: v for k, v in overrides.items() if k in IMAGE_FIELDS}
    train = {k: v for k, v in overrides.items() if k in TRAIN_FIELDS}
    base = image.pop("train", cfg.train)
    try:
        return replace(cfg, **image, train=replace(base, **train))
    except ValueError as err:  # the engine's configs check their own values
        raise UsageError(str(err)) from None


def chain_init(kind: str, shape: tuple[int, ...]) -> NoiseInit:
    """Fresh chain starts for ``kind`` (see :class:`ImageTrainConfig`)."""
    if kind == "uniform":
        return uniform_init(0.0, 1.0, shape)

    def init(n: int, cond: Tensor | None, generator: torch.Generator) -> Tensor:
        return (0.5 + 0.5 * torch.randn((n, *shape), generator=generator)).clamp(0.0, 1.0)

    return init


def load_training_data(cfg: ImageTrainConfig, data_root: str | os.PathLike | None,
                       split: str = "train") -> ImageData:
    """The run's dataset split, checked against the model's image shape and labels."""
    data = load_dataset(cfg.dataset, data_root, split, image_size=cfg.image_size,
                        limit=cfg.limit, seed=cfg.train.seed, label_factor=cfg.label_factor,
                        factor_bins=cfg.factor_bins, hold_out=cfg.hold_out)
    _, c, h, w = data.images.shape
    m = cfg.model
    if (c, h, w) != (m.channels, m.image_size, m.image_size):
        raise UsageError(
            f"{cfg.dataset} gives {c}x{h}x{w} images but the model expects "
            f"{m.channels}x{m.image_size}x{m.image_size}; set image_size or the model's size")
    if cfg.conditional and (data.labels is None or data.num_classes < 1):
        raise UsageError(f"a conditional model needs labels; {cfg.dataset} has none "
                         f"(set label_factor or conditional=False)")
    return data


def model_config(cfg: ImageTrainConfig, num_classes: int) -> ImageEBMConfig:
    """The architecture with the class count filled in (0 when unconditional)."""
    return replace(cfg.model, num_classes=num_classes if cfg.conditional else 0)


def class_loss(model: ImageEBM, weight: float) -> Callable[[Tensor, Tensor], Tensor]:
    """``weight`` × cross-entropy of the logits ``-E(x, y)`` over every class (log p(y | x))."""

    def loss(x: Tensor, labels: Tensor) -> Tensor:
        return weight * F.cross_entropy(-model.class_energies(x), labels)

    return loss


def to_unit(images: Tensor) -> Tensor:
    """uint8 images as float32 in [0, 1] (the batches' transform)."""
    return images.float() / 255.0


def train_images(cfg: ImageTrainConfig, out_dir: str | os.PathLike,
                 data_root: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, resume: bool = False,
                 progress: bool = True) -> ImageEBM:
    """Train an image EBM per ``cfg`` into ``out_dir``; return the trained model (eval mode).

    A folder holding an unfinished run (a checkpoint but no model) is only continued with
    ``resume``: starting afresh there would overwrite its checkpoint and mix its snapshots in.
    """
    device = init_distributed(resolve_device(device))
    rank, _ = world()
    out = run_folder(out_dir, MODEL_FILE, resume, CHECKPOINT_FILE)
    seed = cfg.train.seed
    data = load_training_data(cfg, data_root)
    mcfg = model_config(cfg, data.num_classes)
    torch.manual_seed(seed)
    model = build_model(mcfg)
    shape = tuple(data.images.shape[1:])
    labels = data.labels if cfg.conditional else None
    batches = TensorBatches(data.images, labels, cfg.batch_size, seed=seed + rank,
                            transform=to_unit)
    buffer = ReplayBuffer(cfg.buffer_size, shape, chain_init(cfg.init, shape),
                          cond_shape=() if labels is not None else None,
                          cond_dtype=torch.int64, dtype=torch.uint8,
                          replay_prob=cfg.replay_prob, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    dataset = {"name": data.name, "train_images": len(data.images),
               "num_classes": data.num_classes, "class_names": data.class_names}
    if rank == 0:
        write_run_info(out, cfg, seed, model=mcfg, dataset=dataset, device=str(device),
                       data_root=data_root)
    tcfg = replace(cfg.train, progress=cfg.train.progress and progress)
    aux = class_loss(model, cfg.class_weight) if cfg.class_weight > 0 else None
    trainer = Trainer(model, batches, buffer, tcfg, out, device, aux_loss=aux)
    t0 = time.perf_counter()
    summary = trainer.fit(resume=resume)
    model.cpu().eval()
    if rank != 0:
        return model
    save_image_model(model, cfg, dataset, out / MODEL_FILE,
                     train_seconds=round(time.perf_counter() - t0, 1), summary=summary)
    if len(buffer):
        newest = (buffer.pos - torch.arange(1, min(64, len(buffer)) + 1)) % len(buffer)
        save_grid(buffer.data[newest].float() / 255.0, out / "buffer.png")
    return model


def output_folder(out_dir: str | os.PathLike, subfolder: str) -> Path:
    """``out_dir`` if a command may write there: not a file, not a training run's folder (whose
    ``run.json`` it would overwrite); the error suggests ``out_dir/subfolder``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    if (out / MODEL_FILE).exists() or (out / CHECKPOINT_FILE).exists():
        raise UsageError(f"{out} is a training run's folder; write to a subfolder such as "
                         f"{out / subfolder}")
    return out


def save_image_model(model: ImageEBM, cfg: ImageTrainConfig, dataset: dict[str, Any],
                     path: str | os.PathLike, **meta: Any) -> Path:
    """Write weights, the run config and dataset facts to one model file (see load_image_run)."""
    return save_model_file(path, MODEL_FORMAT, cfg, model.state_dict(),
                           model_config=model.config, dataset=dataset, meta=meta)


@dataclass
class ImageRun:
    """A trained (or training) run loaded back: its config, model and dataset facts."""

    path: Path
    config: ImageTrainConfig
    model: ImageEBM
    dataset: dict[str, Any]


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the configs hold (betas, sampler bounds)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _run_config(record: Any, source: Path) -> ImageTrainConfig:
    """The :class:`ImageTrainConfig` saved as ``record`` in ``source``; UsageError if unusable."""
    if not isinstance(record, dict) or not isinstance(record.get("train"), dict):
        raise UsageError(f"{source}: written by an older imagebm (its config is not split into "
                         f"image settings and `train`); retrain the run with this version")
    try:
        return ImageTrainConfig(**_tuples(record))
    except (TypeError, ValueError) as err:
        raise UsageError(f"{source}: unusable run config ({err})") from None


def load_weights(model: ImageEBM, weights: Any, source: Path) -> ImageEBM:
    """``model`` with ``weights`` loaded, or a one-line UsageError naming ``source``."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        reason = str(err).splitlines()[0]
        raise UsageError(f"{source}: weights do not fit the run's model ({reason})") from None
    return model


def load_image_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> ImageRun:
    """Load ``run_dir/model.pt``, or the latest ``checkpoint.pt`` of a run still training."""
    run = Path(run_dir)
    final, ckpt, info = run / MODEL_FILE, run / CHECKPOINT_FILE, run / "run.json"
    if final.exists():
        record = load_model_file(final, MODEL_FORMAT, "trained image model")
        cfg = _run_config(record["config"], final)
        model_record, weights, source = record.get("model_config"), record["state_dict"], final
    elif ckpt.exists() and info.exists():
        try:
            record = json.loads(info.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UsageError(f"{info}: not a readable run record ({type(err).__name__})"
                             ) from None
        cfg = _run_config(record.get("config"), info)
        model_record, weights, source = record.get("model"), read_checkpoint(ckpt)["model"], ckpt
    else:
        raise UsageError(f"{run} holds no imagebm run (no {MODEL_FILE}, or {CHECKPOINT_FILE} "
                         f"with run.json); train one with `imagebm train`")
    try:
        mcfg = ImageEBMConfig(**model_record)
    except TypeError as err:
        raise UsageError(f"{source}: unusable model config ({err})") from None
    model = load_weights(build_model(mcfg), weights, source)
    return ImageRun(run, cfg, model.to(device).eval(), record.get("dataset", {}))


def run_train(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size),
                                    ("lr", args.lr), ("seed", args.seed)) if v is not None}
    cfg = preset(args.preset, **overrides)
    if args.short_run:
        cfg = short_run(cfg)
    train_images(cfg, args.out, args.data_root, args.device, resume=args.resume,
                 progress=not args.quiet)
    print(f"wrote {Path(args.out) / MODEL_FILE}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``imagebm train``."""
    p = subparsers.add_parser("train", help="train an image EBM from a preset")
    p.add_argument("--preset", required=True, help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--data-root", default=None,
                   help="folder holding the dataset files (not needed for digits, dsprites-16)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--short-run", action="store_true",
                   help="train by short-run chains from noise (no replay) and sample fresh "
                        "images with that chain (presets *-shortrun; README)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
