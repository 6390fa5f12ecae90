"""Generate images from a trained run: Langevin chains from noise in chunks (or the replay buffer).

docs/paper.md §1's evaluation sampler runs the chains in short chunks (20 Langevin steps, gradient
clip 0.05); after each chunk 1% of the chains restart from noise, and successive chunks can use
successive weight snapshots of the run (a historical ensemble). ``imagebm sample --run RUN
--num N --out DIR`` writes ``samples.npy`` (N, C, H, W) in [0, 1], ``samples.png`` (a grid),
``labels.npy`` for conditional runs, ``run.json`` and optionally ``chain.gif``.

Unset settings take the run's own (``ImageTrainConfig.eval_*``). For persistent runs (the
paper's training) these depart from the paper: at the training chain's temperature (noise 0.005
against a drift of ~0.02-0.1 per pixel and step) every chain of a class falls into one image of
a fixed model, from noise or from the buffer alike, the more so the longer it runs, and older
snapshots are worse models. They therefore sample the final weights over 10 chunks with 1000
times the noise variance (:data:`imagebm.presets.SAMPLE_TEMPERATURE`), where the chains stay
diverse, at the price of ~0.16 of noise left on each pixel. Runs trained by short-run chains
(:func:`imagebm.presets.short_run`) sample with their training chain from noise, which is what
they were trained to make good; their fresh samples match the persistent chains
(docs/results/generative.md). :meth:`SampleConfig.paper` is the paper's sampler.

Chains run with every model in eval mode, as the engine's Trainer runs its training chains:
dropout is off and spectral-norm power iterations are frozen, so a chain follows one fixed
energy and the seed alone decides the samples. Train mode is only for the loss's forward pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from imagebm.grid import save_gif, save_grid, tile
from imagebm.models import ImageEBM, build_model
from imagebm.presets import ImageTrainConfig
from imagebm.train import (
    CHECKPOINT_FILE,
    ImageRun,
    chain_init,
    load_image_run,
    load_weights,
    output_folder,
)
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import atomic_save_npy, write_run_info
from trajebm.engine.sampling import langevin
from trajebm.engine.train import read_checkpoint, snapshot_paths

STARTS = ("noise", "buffer")


@dataclass
class SampleConfig:
    """Evaluation sampler: ``chunks`` x ``chunk_steps`` steps over an ensemble of snapshots.

    ``None`` fields take the run's own settings (``eval_*`` of its config, :meth:`resolve`;
    ``grad_clip=inf`` turns clipping off). ``start="buffer"`` with ``chunks=0`` gives the
    persistent training chains themselves.
    """

    num: int = 64
    """Images to sample."""
    start: Literal["noise", "buffer"] = "noise"
    """Chains start from noise (the paper's evaluation) or continue the newest chains of the
    run's replay buffer, with their labels."""
    chunks: int | None = None
    """Sampling chunks (>= 0; default: the run's, 10, or 1 for short-run runs; paper: 20)."""
    chunk_steps: int | None = None
    """Langevin steps per chunk (default: the run's, 20, or its training chain's for
    short-run runs)."""
    grad_clip: float | None = None
    """The chains' gradient clip (default: the run's evaluation clip)."""
    reinit: float | None = None
    """Share of the chains restarted from noise after each chunk (default: the run's)."""
    ensemble: int = 1
    """Newest snapshots to cycle through (1 = final weights; paper: 10)."""
    temperature: float | None = None
    """Multiplies the chains' noise variance (default: the run's, 1000, or 1 for short-run
    runs; paper: 1, whose chains collapse to one image per class on persistent runs)."""
    labels: list[int] | None = None
    """Classes to sample (cycled); default: every class in turn."""
    seed: int = 0
    """Seeds the chains' starts, restarts and noise."""
    gif_frames: int = 0
    """Images per frame of chain.gif, one frame per chunk (0: no GIF)."""

    def __post_init__(self) -> None:
        if self.num < 1 or (self.chunks is not None and self.chunks < 0) or self.ensemble < 1:
            raise UsageError("num and ensemble must be >= 1, chunks >= 0")
        if self.chunk_steps is not None and self.chunk_steps < 1:
            raise UsageError(f"chunk_steps must be >= 1, got {self.chunk_steps}")
        if self.start not in STARTS:
            raise UsageError(f"start must be one of {', '.join(STARTS)}, not {self.start!r}")
        if self.start == "buffer" and self.labels:
            raise UsageError("chains started from the buffer keep their own labels; "
                             "drop --labels or use --start noise")
        if self.temperature is not None and self.temperature <= 0:
            raise UsageError(f"temperature must be positive, got {self.temperature}")

    @classmethod
    def paper(cls, **overrides: Any) -> SampleConfig:
        """The paper's evaluation sampler: 20 chunks of 20 steps (clip 0.05, 1% restarts)
        over 10 snapshots at temperature 1."""
        return cls(**{"chunks": 20, "chunk_steps": 20, "grad_clip": 0.05, "reinit": 0.01,
                      "ensemble": 10, "temperature": 1.0, **overrides})

    def resolve(self, run_config: ImageTrainConfig) -> SampleConfig:
        """This config with every unset field taken from the run's ``eval_*`` settings."""
        rc = run_config
        return replace(
            self, chunks=rc.eval_chunks if self.chunks is None else self.chunks,
            chunk_steps=self.chunk_steps or rc.eval_chunk_steps,
            grad_clip=rc.eval_grad_clip if self.grad_clip is None else self.grad_clip,
            reinit=rc.eval_reinit if self.reinit is None else self.reinit,
            temperature=rc.eval_temperature if self.temperature is None else self.temperature)


def class_diversity(images: Tensor, labels: Tensor | None) -> float:
    """Mean over classes (one class when unlabelled) of the mean pairwise L2 pixel distance."""
    x = images.flatten(1).float()
    groups = [x] if labels is None else [x[labels == c] for c in labels.unique()]
    means = [torch.pdist(g).mean() for g in groups if len(g) > 1]
    if not means:
        raise UsageError("need at least two images of one class to measure diversity")
    return float(torch.stack(means).mean())


def _load_snapshot(path: Path) -> dict[str, Tensor]:
    """A snapshot's weights (``Trainer.save_snapshot``), or a one-line UsageError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UsageError(f"{path}: not a readable weight snapshot ({type(err).__name__})"
                         ) from None


def ensemble_models(run: ImageRun, size: int, device: torch.device) -> list[ImageEBM]:
    """The newest ``size`` snapshots of the run in eval mode (or its model when it has none)."""
    paths = snapshot_paths(run.path)[-size:] if size > 1 else []
    if not paths:
        return [run.model.to(device)]
    return [load_weights(build_model(run.model.config), _load_snapshot(path), path)
            .to(device).eval() for path in paths]


@contextmanager
def eval_mode(models: Sequence[nn.Module]) -> Iterator[None]:
    """Run the block with ``models`` in eval mode; give each its own mode back after."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


def class_labels(run: ImageRun, num: int, labels: list[int] | None) -> Tensor | None:
    """Labels for conditional runs: the given ones cycled, else every class in turn."""
    classes = run.model.config.num_classes
    if classes == 0:
        if labels:
            raise UsageError("this run's model is unconditional; it takes no --labels")
        return None
    chosen = list(range(classes)) if not labels else labels
    bad = [y for y in chosen if not 0 <= y < classes]
    if bad:
        raise UsageError(f"labels {bad} out of range: the model has {classes} classes "
                         f"(0..{classes - 1})")
    return torch.tensor([chosen[i % len(chosen)] for i in range(num)], dtype=torch.int64)


def buffer_chains(run: ImageRun, num: int) -> tuple[Tensor, Tensor | None]:
    """The newest ``num`` samples (in [0, 1]) and labels of the run's saved replay buffer."""
    path = run.path / CHECKPOINT_FILE
    if not path.exists():
        raise UsageError(f"{path} is missing: the replay buffer lives in the run's checkpoint")
    state = read_checkpoint(path)["buffer"]
    if state["size"] < num:
        raise UsageError(f"the run's replay buffer holds {state['size']} samples, "
                         f"fewer than --num {num}")
    idx = (state["pos"] - 1 - torch.arange(num)) % state["size"]
    x = (state["data"][idx].float() + 0.5) / 256.0
    return x, None if state["cond"] is None else state["cond"][idx]


def sample_images(run: ImageRun | str | os.PathLike, config: SampleConfig | None = None,
                  device: str | torch.device | None = None,
                  progress: bool = True) -> tuple[Tensor, Tensor | None, list[np.ndarray]]:
    """Sample ``config.num`` images; return (images in [0, 1], labels or None, GIF frames).

    The models sample in eval mode (see the module docstring) and get their own mode back.
    """
    device = resolve_device(device)
    run = run if isinstance(run, ImageRun) else load_image_run(run, device)
    rc = run.config
    cfg = (config or SampleConfig()).resolve(rc)
    x, labels = buffer_chains(run, cfg.num) if cfg.start == "buffer" else (
        None, class_labels(run, cfg.num, cfg.labels))
    models = ensemble_models(run, cfg.ensemble, device)
    sampler = replace(rc.sampler, steps=cfg.chunk_steps, grad_clip=cfg.grad_clip,
                      temperature=cfg.temperature, bounds=(0.0, 1.0))
    shape = (run.model.config.channels, run.model.config.image_size, run.model.config.image_size)
    init = chain_init(rc.init, shape)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if x is None:
        x = init(cfg.num, None, generator)
    y = None if labels is None else labels.to(device)
    frames = []
    with eval_mode(models):
        for chunk in tqdm(range(cfg.chunks), desc="sample", unit="chunk",
                          disable=not progress):
            model = models[chunk % len(models)]
            x = langevin(model, x.to(device), y, sampler).detach().cpu()
            if cfg.gif_frames:
                frames.append(tile(x[: cfg.gif_frames]))
            if cfg.reinit > 0 and chunk < cfg.chunks - 1:
                fresh = torch.rand(cfg.num, generator=generator) < cfg.reinit
                if fresh.any():
                    x[fresh] = init(int(fresh.sum()), None, generator)
    return x, labels, frames


def write_samples(out_dir: str | os.PathLike, images: Tensor, labels: Tensor | None,
                  frames: list[np.ndarray]) -> Path:
    """Save ``samples.npy``, ``samples.png``, ``labels.npy`` and ``chain.gif`` into out_dir.

    Each file is replaced atomically; an older ``labels.npy`` goes first, so that however the
    writing ends, ``imagebm score`` never pairs these samples with another sampling's labels.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.npy").unlink(missing_ok=True)
    atomic_save_npy(images.numpy().astype(np.float32), out / "samples.npy")
    if labels is not None:
        atomic_save_npy(labels.numpy(), out / "labels.npy")
    save_grid(images[:256], out / "samples.png")
    if frames:
        save_gif(frames, out / "chain.gif")
    return out


def sample_to_folder(run_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     config: SampleConfig | None = None,
                     device: str | torch.device | None = None, progress: bool = True
                     ) -> tuple[Path, int]:
    """Sample a run into ``out_dir`` (:func:`write_samples` plus ``run.json``, the resolved
    sampler); a run's own folder is refused. Returns the folder and the number of images."""
    cfg = config or SampleConfig()
    out = output_folder(out_dir, "samples")
    run = load_image_run(run_dir, resolve_device(device))
    images, labels, frames = sample_images(run, cfg, device, progress=progress)
    write_samples(out, images, labels, frames)
    write_run_info(out, cfg.resolve(run.config), cfg.seed, run=str(run_dir))
    return out, len(images)
