"""Train an image EBM with trajebm's one trainer, replay buffer and Langevin sampler.

Several processes or GPUs: ``torchrun --nproc_per_node N $(which imagebm) train ...``; every
rank keeps its own replay buffer and data order, gradients are averaged (``trajebm.engine.train``).

A run is described by one :class:`~imagebm.presets.ImageTrainConfig` (named ones:
:data:`~imagebm.presets.PRESETS`). :func:`train_images` (``imagebm train --preset NAME --out
RUN``) writes ``run.json``, ``checkpoint.pt`` (exact resume), ``metrics.csv``, ``snapshots/``
(weights for the historical ensemble), ``model.pt`` (final weights + config, in the engine's
model-file format) and ``buffer.png`` (a grid of the latest replay-buffer samples);
:func:`load_image_run` loads a run back (also one written by an older imagebm).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imagebm.datasets import ImageData, load_dataset
from imagebm.grid import save_grid
from imagebm.models import ImageEBM, ImageEBMConfig, build_model
from imagebm.presets import (
    PRESETS,
    SAMPLE_TEMPERATURE,
    ImageTrainConfig,
    config_from_record,
    image_training,
    preset,
    short_run,
)
from trajebm.engine.buffer import NoiseInit, uniform_init
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.modelfile import load_model_file, save_model_file
from trajebm.engine.runinfo import run_folder, write_run_info
from trajebm.engine.train import (
    Contrastive,
    LossFn,
    TensorBatches,
    Trainer,
    init_distributed,
    read_checkpoint,
    world,
)

__all__ = [  # the run's settings are re-exported: `from imagebm.train import preset` works
    "CHECKPOINT_FILE", "MODEL_FILE", "MODEL_FORMAT", "PRESETS", "SAMPLE_TEMPERATURE",
    "ImageRun", "ImageTrainConfig", "chain_init", "class_loss", "contrastive_objective",
    "image_training", "load_image_run", "load_training_data", "load_weights", "model_config",
    "output_folder", "preset", "save_image_model", "short_run", "to_unit", "train_images",
]

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FORMAT = "imagebm-model"


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


def contrastive_objective(model: nn.Module, cfg: ImageTrainConfig, shape: tuple[int, ...],
                          conditional: bool, aux_loss: LossFn | None = None,
                          seed: int = 0) -> Contrastive:
    """The image runs' contrastive objective: ``cfg``'s training chain and contrastive
    settings, a replay buffer of 8-bit images (and int64 labels when ``conditional``) whose
    fresh chains start from ``cfg.init``."""
    return Contrastive.build(model, cfg.sampler, cfg.contrastive, shape,
                             chain_init(cfg.init, shape),
                             cond_shape=() if conditional else None, cond_dtype=torch.int64,
                             dtype=torch.uint8, aux_loss=aux_loss, seed=seed)


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
    labels = data.labels if cfg.conditional else None
    batches = TensorBatches(data.images, labels, cfg.batch_size, seed=seed + rank,
                            transform=to_unit)
    aux = class_loss(model, cfg.class_weight) if cfg.class_weight > 0 else None
    objective = contrastive_objective(model, cfg, tuple(data.images.shape[1:]),
                                      labels is not None, aux, seed)
    out.mkdir(parents=True, exist_ok=True)
    dataset = {"name": data.name, "train_images": len(data.images),
               "num_classes": data.num_classes, "class_names": data.class_names,
               "split_seed": data.split_seed}
    if rank == 0:
        write_run_info(out, cfg, seed, model=mcfg, dataset=dataset, device=str(device),
                       data_root=data_root)
    tcfg = replace(cfg.train, progress=cfg.train.progress and progress)
    t0 = time.perf_counter()
    summary = Trainer(model, batches, objective, tcfg, out, device).fit(resume=resume)
    model.cpu().eval()
    if rank != 0:
        return model
    save_image_model(model, cfg, dataset, out / MODEL_FILE,
                     train_seconds=round(time.perf_counter() - t0, 1), summary=summary)
    buffer = objective.buffer
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
        cfg = config_from_record(record["config"], final)
        model_record, weights, source = record.get("model_config"), record["state_dict"], final
    elif ckpt.exists() and info.exists():
        try:
            record = json.loads(info.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UsageError(f"{info}: not a readable run record ({type(err).__name__})"
                             ) from None
        cfg = config_from_record(record.get("config"), info)
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
