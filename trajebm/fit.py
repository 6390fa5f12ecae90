"""Train a trajectory model on a dataset, every kind with the one shared trainer.

The EBM's positives are z-scored next states with condition = (context, action); its chains
start at the last context state + U(-0.3, 0.3). The baselines (MSE regression, Gaussian
ensemble NLL) give the trainer their loss instead, on the same batches, so they get the same
checkpoints, exact resume, divergence guard and torchrun support. Every run folder gets ``model.pt``
(see :func:`trajebm.models.load_model`), ``checkpoint.pt``, ``metrics.csv`` and ``run.json``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trajebm.engine.buffer import ReplayBuffer
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import run_folder, write_run_info
from trajebm.engine.train import (
    TensorBatches,
    TrainConfig,
    Trainer,
    init_distributed,
    seed_everything,
    world,
)
from trajebm.models import (
    MODEL_FILE,
    ModelConfig,
    TrajectoryModel,
    build_model,
    save_model,
)


@dataclass
class FitConfig:
    """How to train. PAPER.md §2 uses batch 1024 and beta1 = 0 (``paper_fit_config``); on the
    hand data, batch 256 with beta1 = 0.9 for the same compute gave lower FD (see README)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    alpha: float = 1.0
    kl_weight: float = 0.0
    replay_prob: float = 0.0
    buffer_capacity: int = 10000
    test_fraction: float = 0.1
    split_seed: int = 0
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 25
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        if self.steps < 0 or self.batch_size <= 0 or self.lr <= 0:
            raise UsageError("steps must be >= 0, batch_size and lr positive")
        if not 0.0 <= self.replay_prob <= 1.0:
            raise UsageError(f"replay_prob must be in [0, 1], got {self.replay_prob}")


def paper_fit_config(**overrides: Any) -> FitConfig:
    """PAPER.md §2 exactly: batch 1024, Adam beta = (0, 0.999), s_{t+1} fed as is."""
    model = overrides.pop("model", ModelConfig())
    return FitConfig(model=replace(model, delta_input=False), batch_size=1024,
                     betas=(0.0, 0.999), **overrides)


def training_tensors(dataset: Any, conditional: bool) -> tuple[Tensor, Tensor]:
    """(next states, conditions) of every training window, z-scored, as float32 tensors."""
    w = dataset.windows("train", normalized=True)
    if not len(w.next_state):
        raise UsageError("the dataset's training split has no windows")
    parts = [torch.from_numpy(w.context.reshape(len(w.context), -1))]
    if conditional:
        parts.append(torch.from_numpy(w.action))
    return torch.from_numpy(w.next_state).float(), torch.cat(parts, 1).float()


def context_init(model: TrajectoryModel):
    """The buffer's fresh-chain init: last context state + U(-a, a), a function of cond."""

    def init(n: int, cond: Tensor | None, generator: torch.Generator) -> Tensor:
        return model.init_chains(cond, generator)

    return init


def fit_model(data: str | os.PathLike, out_dir: str | os.PathLike,
              config: FitConfig | None = None, device: str | torch.device | None = None,
              resume: bool = False) -> TrajectoryModel:
    """Train ``config.model`` on the dataset folder ``data``; save it in ``out_dir``.

    Under ``torchrun`` every rank trains on its own batch order and rank 0 saves the model.
    """
    from trajebm.data import TrajectoryDataset

    cfg = config or FitConfig()
    device = init_distributed(resolve_device(device))
    rank, _ = world()
    out = run_folder(out_dir, MODEL_FILE, resume)
    ds = TrajectoryDataset(data, context=cfg.model.context, test_fraction=cfg.test_fraction,
                           seed=cfg.split_seed, dtype="float32")
    own = ds.metadata["trajebm"]
    mcfg = replace(cfg.model, state_dim=ds.state_dim, action_dim=ds.action_dim)
    cfg = replace(cfg, model=mcfg)
    meta = {"dataset_id": ds.metadata.get("dataset_id"), "env_id": own["env_id"],
            "state_names": own["state_names"], "dataset_path": str(data)}
    seed_everything(cfg.seed)
    model = build_model(mcfg, ds.state_stats.mean, ds.state_stats.std, meta)
    x, cond = training_tensors(ds, mcfg.conditional)
    batches = TensorBatches(x, cond, cfg.batch_size, seed=cfg.seed + rank)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        write_run_info(out, cfg, cfg.seed, dataset=meta, train_windows=len(x),
                       device=str(device))
    t0 = time.perf_counter()
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, betas=tuple(cfg.betas),
                       warmup_steps=cfg.warmup_steps, alpha=cfg.alpha,
                       kl_weight=cfg.kl_weight, sampler=mcfg.sampler,
                       negatives_cond="buffer" if cfg.replay_prob > 0 else "data",
                       adam_clip=mcfg.kind == "ebm", seed=cfg.seed,
                       checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                       progress=cfg.progress)
    if mcfg.kind == "ebm":
        buffer = ReplayBuffer(cfg.buffer_capacity, (mcfg.state_dim,), context_init(model),
                              cond_shape=(mcfg.cond_dim,), replay_prob=cfg.replay_prob,
                              seed=cfg.seed)
        summary = Trainer(model, batches, buffer, tcfg, out, device).fit(resume=resume)
        if (message := collapse_message(summary)) is not None:
            warnings.warn(message, stacklevel=2)
    else:
        summary = Trainer(model, batches, None, tcfg, out, device,
                          loss_fn=model.loss).fit(resume=resume)
    model.meta["train_seconds"] = round(time.perf_counter() - t0, 2)
    model.meta["train_summary"] = summary
    model.cpu().eval()
    if rank == 0:
        save_model(model, out / MODEL_FILE)
    return model


COLLAPSE_GAP = 0.2


def collapse_message(summary: dict[str, float]) -> str | None:
    """A warning when the EBM separates data from its own samples outright (e_neg >> e_pos).

    On the hand data, runs at batch 256 fell into E(x+) = -0.5, E(x-) = +0.5 (the optimum of
    the L2-penalised loss for a perfect classifier) after ~5,700 steps; its chains then no
    longer reach the data and rollouts diverge. The divergence guard does not catch this.
    """
    gap = summary.get("e_neg", 0.0) - summary.get("e_pos", 0.0)
    if gap <= COLLAPSE_GAP:
        return None
    return (f"EBM collapsed: final E(negatives) - E(data) = {gap:.2f} > {COLLAPSE_GAP}; its "
            f"samples no longer reach the data. Train fewer steps (metrics.csv shows when the "
            f"gap opened) or lower the lr.")


def run_train(args: argparse.Namespace) -> int:
    mcfg = ModelConfig(kind=args.model, conditional=not args.unconditional,
                       context=args.context, hidden=args.hidden, layers=args.layers,
                       spectral_norm=args.spectral_norm, delta_input=args.delta_input)
    cfg = FitConfig(model=mcfg, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    betas=(args.beta1, 0.999), replay_prob=args.replay_prob,
                    kl_weight=args.kl_weight, seed=args.seed, progress=not args.quiet)
    if args.paper:
        cfg = paper_fit_config(model=mcfg, steps=args.steps, lr=args.lr,
                               replay_prob=args.replay_prob, kl_weight=args.kl_weight,
                               seed=args.seed,
                               progress=not args.quiet)
    fit_model(args.data, args.out, cfg, args.device, resume=args.resume)
    print(f"wrote {Path(args.out) / MODEL_FILE}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``trajebm train``."""
    d = FitConfig()
    p = subparsers.add_parser("train", help="train a trajectory model (ebm | fc | ensemble)")
    p.add_argument("--data", required=True, help="dataset folder (from `trajebm collect`)")
    p.add_argument("--model", default="ebm", choices=("ebm", "fc", "ensemble"))
    p.add_argument("--unconditional", action="store_true", help="do not condition on actions")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--context", type=int, default=d.model.context, help="k context states")
    p.add_argument("--hidden", type=int, default=d.model.hidden)
    p.add_argument("--layers", type=int, default=d.model.layers)
    p.add_argument("--beta1", type=float, default=d.betas[0], help="Adam beta1")
    p.add_argument("--spectral-norm", action="store_true")
    p.add_argument("--delta-input", action=argparse.BooleanOptionalAction,
                   default=d.model.delta_input, help="EBM: feed s_{t+1} - s_t, not s_{t+1}")
    p.add_argument("--paper", action="store_true",
                   help="PAPER.md §2 exactly: batch 1024, beta1 0, no --delta-input")
    p.add_argument("--kl-weight", type=float, default=d.kl_weight,
                   help="EBM: weight of the KL term through the last Langevin step (0 = off)")
    p.add_argument("--replay-prob", type=float, default=d.replay_prob,
                   help="EBM: chance a chain continues from the replay buffer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
