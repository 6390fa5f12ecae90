"""Train a trajectory model on a dataset, every kind with the one shared trainer.

The EBM's positives are z-scored next states (segments) with condition = (context, actions);
its chains start at the last context state + U(-0.3, 0.3). The baselines (MSE regression,
Gaussian ensemble NLL) give the trainer their loss instead, on the same batches, so they get
the same checkpoints, exact resume, divergence guard and torchrun support. Options that fight
compounding error — noise on the context states, training on the model's own rollouts — apply
to every model kind alike, and so does checkpoint selection on held-out validation rollouts.
Every run folder gets ``model.pt`` (see :func:`trajebm.modelio.load_model`),
``checkpoint.pt``, ``metrics.csv`` and ``run.json``.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trajebm.data.dataset import TrajectoryDataset
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.metrics import frechet_distance_samples
from trajebm.engine.runinfo import run_folder, write_run_info
from trajebm.engine.train import (
    Contrastive,
    Objective,
    Supervised,
    TrainConfig,
    Trainer,
    init_distributed,
    seed_everything,
    world,
)
from trajebm.modelio import MODEL_FILE, save_model
from trajebm.models import EBMConfig, ModelConfig, TrajectoryEBM, TrajectoryModel, build_model
from trajebm.rollout import rollout_z


def trajectory_train_config(**overrides: Any) -> TrainConfig:
    """The shared trainer's settings for trajectory models (its defaults are the paper's image
    ones): 3,000 steps, Adam lr 1e-3 with beta1 = 0.9 and 100 warm-up steps, validation every
    250 steps with the best checkpoint kept by validation FD."""
    defaults = dict(steps=3000, lr=1e-3, betas=(0.9, 0.999), warmup_steps=100,
                    checkpoint_every=500, log_every=25, validate_every=250, select_by="val_fd")
    return TrainConfig(**{**defaults, **overrides})


@dataclass
class FitConfig:
    """How to train: the model (its kind's config), the trainer's settings and the data's.

    Validation rolls out ``val_horizon`` steps from at most ``val_trajectories`` held-out
    trajectories (bounded, so validation costs the same on a dataset of any size). Named,
    complete FitConfigs are the variants of :mod:`trajebm.variants`.
    """

    model: ModelConfig = field(default_factory=EBMConfig)
    """The model kind and its settings (``trajebm.models``)."""
    train: TrainConfig = field(default_factory=trajectory_train_config)
    """The trainer's settings (steps, optimiser, checkpoints, validation)."""
    batch_size: int = 256
    """Windows per training batch."""
    test_fraction: float = 0.1
    """Share of the episodes held out for testing."""
    split_seed: int = 0
    """Seed of the train/validation/test split by episode."""
    val_fraction: float = 0.05
    """Share of the episodes held out for validation."""
    val_horizon: int = 48
    """Steps of the validation rollouts."""
    val_trajectories: int = 1000
    """Validation trajectories rolled out at most."""
    context_noise: float = 0.0
    """N(0, sigma^2) noise (z units) on the context states of every batch."""
    rollout_fraction: float = 0.0
    """Share of each batch taken from the model's own rollouts (0: none)."""
    rollout_horizon: int = 8
    """Steps of those own rollouts."""
    rollout_every: int = 250
    """Training steps between refreshes of the own-rollout pool."""
    rollout_start: int = 1000
    """First training step that uses own rollouts."""

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or self.train.lr <= 0:
            raise UsageError("batch_size and lr must be positive")
        if not 0.0 <= self.rollout_fraction <= 1.0:
            raise UsageError(f"rollout_fraction must be in [0, 1], got {self.rollout_fraction}")
        if self.context_noise < 0:
            raise UsageError(f"context_noise must be >= 0, got {self.context_noise}")
        if min(self.val_horizon, self.val_trajectories, self.rollout_horizon,
               self.rollout_every) < 1:
            raise UsageError("val_horizon, val_trajectories, rollout_horizon and rollout_every "
                             "must be >= 1")
        if self.rollout_start < 0:
            raise UsageError(f"rollout_start must be >= 0, got {self.rollout_start}")

    @property
    def seed(self) -> int:
        return self.train.seed


class TrajectoryBatches:
    """Endless shuffled batches ``(next states, condition)`` gathered lazily from a dataset.

    Only an index of window starts is held; each batch gathers its windows from the dataset's
    memory-mapped arrays, z-scored, as float32 (M, segment * D) next states and
    (M, k * D [+ segment * A]) conditions. The order is a permutation per epoch drawn from
    ``(seed, epoch)``, so the saved state stays a few numbers however large the data, and a
    resumed run regenerates the same order. ``context_noise`` adds N(0, sigma^2) (z units) to
    the context states of every batch, the targets staying true, so a model learns to pull a
    perturbed context back (as learned simulators do). With ``rollout_fraction`` > 0 that
    share of each batch comes from the model's own rollouts (DaD, Venkatraman et al. 2015; the
    paper's code had it as an option): from step ``rollout_start`` on (an untrained model's
    rollouts teach nothing), every ``rollout_every`` steps the model rolls out
    ``rollout_horizon`` steps from random windows of the split under the true actions, and
    each predicted context is paired with the true next state.
    """

    def __init__(self, dataset: TrajectoryDataset, batch_size: int, seed: int = 0, *,
                 model: TrajectoryModel, split: str = "train", context_noise: float = 0.0,
                 rollout_fraction: float = 0.0, rollout_horizon: int = 8,
                 rollout_every: int = 250, rollout_start: int = 0) -> None:
        self.dataset, self.split, self.model = dataset, split, model
        self.segment = model.config.segment
        self.starts = dataset.window_starts(split, self.segment)
        if not len(self.starts):
            raise UsageError(f"the dataset's {split} split has no windows of "
                             f"{dataset.context} + {self.segment} states")
        self.batch_size = min(batch_size, len(self.starts))
        self.context_noise = context_noise
        self.rollout_fraction, self.rollout_horizon = rollout_fraction, rollout_horizon
        self.rollout_every, self.rollout_start = rollout_every, rollout_start
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.pos, self.step = 0, 0, 0
        self.pool: tuple[Tensor, Tensor] | None = None
        self._order: np.ndarray | None = None
        self._pool_starts: np.ndarray | None = None

    def __iter__(self) -> TrajectoryBatches:
        return self

    def order(self) -> np.ndarray:
        """This epoch's permutation of the window index (regenerated from seed and epoch)."""
        if self._order is None:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._order = rng.permutation(len(self.starts))
        return self._order

    def tensors(self, starts: np.ndarray) -> tuple[Tensor, Tensor]:
        """(z-scored next states, conditions) of the windows at ``starts``, float32."""
        w = self.dataset.gather(starts, self.segment, normalized=True)
        m = len(starts)
        parts = [w.context.reshape(m, -1)]
        if self.model.config.conditional:
            parts.append(w.action.reshape(m, -1))
        cond = np.concatenate(parts, 1, dtype=np.float32)
        return torch.from_numpy(w.next_state.reshape(m, -1).astype(np.float32)), \
            torch.from_numpy(cond)

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self.pos + self.batch_size > len(self.starts):
            self.epoch, self.pos, self._order = self.epoch + 1, 0, None
        idx = self.order()[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        x, cond = self.tensors(self.starts[idx])
        if self.rollout_fraction > 0 and self.step >= self.rollout_start:
            if (self.step - self.rollout_start) % self.rollout_every == 0:
                self.pool = self._rollout_pool()
            n = int(round(self.rollout_fraction * len(x)))
            pick = torch.randint(len(self.pool[0]), (n,), generator=self.generator)
            x = torch.cat([x[n:], self.pool[0][pick]])
            cond = torch.cat([cond[n:], self.pool[1][pick]])
        if self.context_noise > 0:
            width = self.model.config.context * self.model.config.state_dim
            noise = torch.randn((len(cond), width), generator=self.generator)
            cond[:, :width] += self.context_noise * noise
        self.step += 1
        return x, cond

    @torch.no_grad()
    def _rollout_pool(self) -> tuple[Tensor, Tensor]:
        """(true next states, predicted-context conditions) from short own rollouts."""
        cfg = self.model.config
        k, h, seg = cfg.context, self.rollout_horizon, cfg.segment
        if self._pool_starts is None:
            self._pool_starts = self.dataset.window_starts(self.split, h + seg)
        if not len(self._pool_starts):
            raise UsageError(f"the {self.split} episodes are too short to train on rollouts of "
                             f"{h} steps with k = {k} (and segment {seg})")
        n = max(1, self.batch_size // h)
        pick = torch.randint(len(self._pool_starts), (n,), generator=self.generator).numpy()
        w = self.dataset.gather(self._pool_starts[pick], h + seg, normalized=True)
        device = next(self.model.parameters()).device  # the trainer's; the pool stays on CPU
        window = torch.from_numpy(w.context.astype(np.float32)).to(device)
        states = torch.from_numpy(w.next_state.astype(np.float32))
        acts = torch.from_numpy(w.action.astype(np.float32)).to(device) if cfg.conditional \
            else None
        pred = rollout_z(self.model, window, acts, h)
        traj = torch.cat([window, pred], 1)
        xs, conds = [], []
        for j in range(1, h + 1):
            act = acts[:, j : j + seg] if acts is not None else None
            xs.append(states[:, j : j + seg].reshape(n, -1))
            conds.append(self.model.make_cond(traj[:, j : j + k], act).cpu())
        return torch.cat(xs), torch.cat(conds)

    def state_dict(self) -> dict[str, Any]:
        """A few numbers, the generator and the rollout pool: constant in the data's size."""
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos, "step": self.step,
                "windows": len(self.starts), "generator": self.generator.get_state(),
                "pool": self.pool}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["windows"]) != len(self.starts):
            raise ValueError(f"the saved data order is over {state['windows']} windows, this "
                             f"dataset split has {len(self.starts)}")
        self.seed, self.epoch, self._order = int(state["seed"]), int(state["epoch"]), None
        self.pos, self.step = int(state["pos"]), int(state["step"])
        self.generator.set_state(state["generator"])
        self.pool = state["pool"]


def context_init(model: TrajectoryModel):
    """The buffer's fresh-chain init: last context state + U(-a, a), a function of cond."""

    def init(n: int, cond: Tensor | None, generator: torch.Generator) -> Tensor:
        return model.init_chains(cond, generator)

    return init


def rollout_validator(model: TrajectoryModel, states: np.ndarray, actions: np.ndarray,
                      horizon: int, seed: int = 0):
    """A validation function for the trainer: rollouts from held-out trajectories.

    Returns ``{"val_one_step": MSE of the first predicted state, "val_fd": mean FD over the
    horizon (every 8th step)}``, z units, one sample per start, a fixed seed — so successive
    checkpoints are compared on the same draws.
    """
    k = model.config.context
    horizon = min(horizon, states.shape[1] - k)
    window = torch.from_numpy(states[:, :k]).float()
    acts = torch.from_numpy(actions[:, k - 1 : k - 1 + horizon]).float()
    truth = states[:, k : k + horizon]
    steps = sorted({*range(7, horizon, 8), horizon - 1})

    def validate(net: TrajectoryModel) -> dict[str, float]:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            pred = rollout_z(net, window, acts if net.config.conditional else None,
                             horizon).numpy()
        if not np.isfinite(pred).all():
            return {"val_one_step": float("inf"), "val_fd": float("inf")}
        fd = [frechet_distance_samples(pred[:, t], truth[:, t]) for t in steps]
        return {"val_one_step": float(np.mean((pred[:, 0] - truth[:, 0]) ** 2)),
                "val_fd": float(np.mean(fd))}

    return validate


def objective(model: TrajectoryModel, seed: int = 0) -> Objective:
    """What a model of each kind trains on: a contrastive EBM against its own chains (with the
    proposal head's MSE beside it), every other kind on its own loss."""
    if not isinstance(model, TrajectoryEBM):
        return Supervised(model, model.loss)
    c = model.config
    aux = model.proposal_loss if c.proposal else None
    return Contrastive.build(model, c.sampler, c.contrastive, (c.out_dim,), context_init(model),
                             cond_shape=(c.cond_dim,), aux_loss=aux, seed=seed)


def fit_model(data: str | os.PathLike, out_dir: str | os.PathLike,
              config: FitConfig | None = None, device: str | torch.device | None = None,
              resume: bool = False, init: TrajectoryModel | None = None) -> TrajectoryModel:
    """Train ``config.model`` on the dataset folder ``data``; save it in ``out_dir``.

    The model records the split (seed, test and validation fractions) it was trained on, so
    evaluation scores it on its own test trajectories. Under ``torchrun`` every rank trains on
    its own batch order and rank 0 saves the model. ``init`` continues training a model of
    the same config: its weights and its z-scoring (not the dataset's) are the start.
    """
    cfg = config or FitConfig()
    device = init_distributed(resolve_device(device))
    rank, _ = world()
    out = run_folder(out_dir, MODEL_FILE, resume)
    ds = TrajectoryDataset(data, context=cfg.model.context, test_fraction=cfg.test_fraction,
                           seed=cfg.split_seed, dtype="float32", val_fraction=cfg.val_fraction)
    info = ds.info
    mcfg = replace(cfg.model, state_dim=ds.state_dim, action_dim=ds.action_dim)
    cfg = replace(cfg, model=mcfg)
    meta = {"dataset_id": info.dataset_id, "env_id": info.env_id,
            "state_names": list(info.state_names), "dataset_path": str(data), "split": ds.split,
            "normalization_floored": [info.state_names[i] for i in ds.state_stats.floored]}
    seed_everything(cfg.seed)
    model = build_model(mcfg, ds.state_stats.mean, ds.state_stats.std, meta)
    if init is not None:
        if init.config != mcfg:
            raise UsageError(f"init is a {init.kind} model of another config than "
                             f"{mcfg.kind}: {init.config} vs {mcfg}")
        model.load_state_dict(init.state_dict())
    batches = TrajectoryBatches(
        ds, cfg.batch_size, seed=cfg.seed + rank, model=model,
        context_noise=cfg.context_noise, rollout_fraction=cfg.rollout_fraction,
        rollout_horizon=cfg.rollout_horizon, rollout_every=cfg.rollout_every,
        rollout_start=cfg.rollout_start)
    validate = None
    if cfg.train.validate_every:
        val_s, val_a = ds.trajectories("val", normalized=True, limit=cfg.val_trajectories)
        if len(val_s) >= 2:
            validate = rollout_validator(model, val_s, val_a, cfg.val_horizon, cfg.seed)
        else:
            warnings.warn(f"{len(val_s)} validation trajectories (val_fraction "
                          f"{cfg.val_fraction}): no validation, the last weights are kept",
                          stacklevel=2)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        write_run_info(out, cfg, cfg.seed, dataset=meta, train_windows=len(batches.starts),
                       device=str(device))
    t0 = time.perf_counter()
    trainer = Trainer(model, batches, objective(model, cfg.seed), cfg.train, out, device,
                      validate=validate)
    summary = trainer.fit(resume=resume)
    if isinstance(model, TrajectoryEBM) and (message := collapse_message(summary)) is not None:
        warnings.warn(message, stacklevel=2)
    chosen = trainer.best_state_dict() or trainer.ema_state_dict()
    if chosen is not None:
        model.load_state_dict(chosen)
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
    longer reach the data and rollouts diverge. ``ContrastiveConfig.collapse_gap`` acts on it.
    """
    gap = summary.get("e_neg", 0.0) - summary.get("e_pos", 0.0)
    if gap <= COLLAPSE_GAP:
        return None
    return (f"EBM collapsed: final E(negatives) - E(data) = {gap:.2f} > {COLLAPSE_GAP}; its "
            f"samples no longer reach the data. Train fewer steps (metrics.csv shows when the "
            f"gap opened), lower the lr or set a collapse guard (a spec's collapse_gap=...).")
