"""Generate images from a trained run with the paper's evaluation-time sampler.

PAPER.md §1: the chains are a buffer run in short chunks (20 Langevin steps, gradient clip
0.05); after each chunk 1% of the chains restart from noise, and successive chunks use
successive weight snapshots of the run (a historical ensemble). ``imagebm sample --run RUN
--num N --out DIR`` writes ``samples.npy`` (N, C, H, W) in [0, 1], ``samples.png`` (a grid),
``labels.npy`` for conditional runs, ``run.json`` and optionally ``chain.gif``.

Chains run with every model in eval mode, as the engine's Trainer runs its training chains:
dropout is off and spectral-norm power iterations are frozen, so a chain follows one fixed
energy and the seed alone decides the samples. Train mode is only for the loss's forward pass.
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from imagebm.grid import save_gif, save_grid, tile
from imagebm.models import ImageEBM, build_model
from imagebm.train import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    ImageRun,
    chain_init,
    load_image_run,
    load_weights,
)
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import atomic_write_bytes, write_run_info
from trajebm.engine.sampling import langevin
from trajebm.engine.train import read_checkpoint, snapshot_paths

STARTS = ("noise", "buffer")


@dataclass
class SampleConfig:
    """Evaluation sampler: ``chunks`` x ``chunk_steps`` steps over an ensemble of snapshots.

    ``None`` fields take the run's own settings (``eval_*`` of its config; ``grad_clip=inf``
    turns clipping off); ``ensemble`` is the number of newest snapshots cycled through (1 = the
    final weights only). ``start="buffer"`` continues the newest ``num`` chains of the run's
    replay buffer (with their labels) instead of starting from noise; with ``chunks=0`` the
    result is the persistent training chains themselves.
    """

    num: int = 64
    start: str = "noise"
    chunks: int = 20
    chunk_steps: int | None = None
    grad_clip: float | None = None
    reinit: float | None = None
    ensemble: int = 10
    temperature: float = 1.0
    labels: list[int] | None = None
    seed: int = 0
    gif_frames: int = 0

    def __post_init__(self) -> None:
        if self.num < 1 or self.chunks < 0 or self.ensemble < 1:
            raise UsageError("num and ensemble must be >= 1, chunks >= 0")
        if self.start not in STARTS:
            raise UsageError(f"start must be one of {', '.join(STARTS)}, not {self.start!r}")
        if self.start == "buffer" and self.labels:
            raise UsageError("chains started from the buffer keep their own labels; "
                             "drop --labels or use --start noise")
        if self.temperature <= 0:
            raise UsageError(f"temperature must be positive, got {self.temperature}")


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
    cfg = config or SampleConfig()
    device = resolve_device(device)
    run = run if isinstance(run, ImageRun) else load_image_run(run, device)
    rc = run.config
    x, labels = buffer_chains(run, cfg.num) if cfg.start == "buffer" else (
        None, class_labels(run, cfg.num, cfg.labels))
    models = ensemble_models(run, cfg.ensemble, device)
    clip = rc.eval_grad_clip if cfg.grad_clip is None else cfg.grad_clip
    sampler = replace(rc.train.sampler, steps=cfg.chunk_steps or rc.eval_chunk_steps,
                      grad_clip=clip, temperature=cfg.temperature, bounds=(0.0, 1.0))
    reinit = rc.eval_reinit if cfg.reinit is None else cfg.reinit
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
            if reinit > 0 and chunk < cfg.chunks - 1:
                fresh = torch.rand(cfg.num, generator=generator) < reinit
                if fresh.any():
                    x[fresh] = init(int(fresh.sum()), None, generator)
    return x, labels, frames


def _save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def write_samples(out_dir: str | os.PathLike, images: Tensor, labels: Tensor | None,
                  frames: list[np.ndarray]) -> Path:
    """Save ``samples.npy``, ``samples.png``, ``labels.npy`` and ``chain.gif`` into out_dir.

    Each file is replaced atomically; an older ``labels.npy`` goes first, so that however the
    writing ends, ``imagebm score`` never pairs these samples with another sampling's labels.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.npy").unlink(missing_ok=True)
    _save_npy(out / "samples.npy", images.numpy().astype(np.float32))
    if labels is not None:
        _save_npy(out / "labels.npy", labels.numpy())
    save_grid(images[:256], out / "samples.png")
    if frames:
        save_gif(frames, out / "chain.gif")
    return out


def run_sample(args: argparse.Namespace) -> int:
    cfg = SampleConfig(num=args.num, start=args.start, chunks=args.chunks,
                       chunk_steps=args.chunk_steps, ensemble=args.ensemble,
                       temperature=args.temperature, labels=args.labels, seed=args.seed,
                       gif_frames=64 if args.gif else 0)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    if (out / MODEL_FILE).exists() or (out / CHECKPOINT_FILE).exists():
        raise UsageError(f"{out} is a training run's folder (its run.json would be "
                         f"overwritten); write the samples to a subfolder such as "
                         f"{out / 'samples'}")
    images, labels, frames = sample_images(args.run, cfg, args.device, progress=not args.quiet)
    write_samples(out, images, labels, frames)
    write_run_info(out, cfg, cfg.seed, run=str(args.run))
    print(f"wrote {len(images)} samples to {out / 'samples.npy'} and {out / 'samples.png'}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``imagebm sample``."""
    d = SampleConfig()
    p = subparsers.add_parser("sample", help="generate images from a trained run")
    p.add_argument("--run", required=True, help="run folder from `imagebm train`")
    p.add_argument("--num", type=int, default=d.num)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--start", default=d.start, choices=STARTS,
                   help="chains start from noise (paper's evaluation) or the run's replay buffer")
    p.add_argument("--chunks", type=int, default=d.chunks, help="sampling chunks (>= 0)")
    p.add_argument("--chunk-steps", type=int, default=None,
                   help="Langevin steps per chunk (default: the run's, 20)")
    p.add_argument("--ensemble", type=int, default=d.ensemble,
                   help="newest snapshots to cycle through (1 = final weights)")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--labels", type=int, nargs="+", default=None,
                   help="classes to sample (cycled); default: every class in turn")
    p.add_argument("--gif", action="store_true", help="also write chain.gif")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_sample)
