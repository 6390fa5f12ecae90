"""Train a trajectory model on a dataset, every kind with the one shared trainer.

The EBM's positives are z-scored next states (segments) with condition = (context, actions);
its chains start at the last context state + U(-0.3, 0.3). The baselines (MSE regression,
Gaussian ensemble NLL) give the trainer their loss instead, on the same batches, so they get
the same checkpoints, exact resume, divergence guard and torchrun support. Options that fight
compounding error — noise on the context states, training on the model's own rollouts — apply
to every model kind alike, and so does checkpoint selection on held-out validation rollouts.
Every run folder gets ``model.pt`` (see :func:`trajebm.models.load_model`),
``checkpoint.pt``, ``metrics.csv`` and ``run.json``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trajebm.data.dataset import TrajectoryDataset
from trajebm.engine.buffer import ReplayBuffer
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.metrics import frechet_distance_samples
from trajebm.engine.runinfo import run_folder, write_run_info
from trajebm.engine.train import TrainConfig, Trainer, init_distributed, seed_everything, world
from trajebm.models import (
    MODEL_FILE,
    ModelConfig,
    TrajectoryModel,
    build_model,
    rollout_z,
    save_model,
)


def trajectory_train_config(**overrides: Any) -> TrainConfig:
    """The shared trainer's settings for trajectory models (its defaults are the paper's image
    ones): 3,000 steps, Adam lr 1e-3 with beta1 = 0.9 and 100 warm-up steps, validation every
    250 steps with the best checkpoint kept by validation FD."""
    defaults = dict(steps=3000, lr=1e-3, betas=(0.9, 0.999), warmup_steps=100,
                    checkpoint_every=500, log_every=25, validate_every=250, select_by="val_fd")
    return TrainConfig(**{**defaults, **overrides})


@dataclass
class FitConfig:
    """How to train: the model, the shared trainer's settings, and the trajectory-specific
    data options. PAPER.md §2 uses batch 1024 and beta1 = 0 (:func:`paper_fit_config`).
    Validation rolls out ``val_horizon`` steps from at most ``val_trajectories`` held-out
    trajectories (bounded, so validation costs the same on a dataset of any size)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=trajectory_train_config)
    batch_size: int = 256
    replay_prob: float = 0.0
    buffer_capacity: int = 10000
    test_fraction: float = 0.1
    split_seed: int = 0
    val_fraction: float = 0.05
    val_horizon: int = 48
    val_trajectories: int = 1000
    context_noise: float = 0.0
    rollout_fraction: float = 0.0
    rollout_horizon: int = 8
    rollout_every: int = 250
    rollout_start: int = 1000

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        if self.batch_size <= 0 or self.train.lr <= 0 or self.train.steps < 0:
            raise UsageError("steps must be >= 0, batch_size and lr positive")
        for name in ("replay_prob", "rollout_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"{name} must be in [0, 1], got {getattr(self, name)}")
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


def paper_fit_config(**overrides: Any) -> FitConfig:
    """PAPER.md §2 exactly: batch 1024, Adam beta = (0, 0.999), s_{t+1} fed as is."""
    model = overrides.pop("model", ModelConfig())
    train = overrides.pop("train", trajectory_train_config())
    return FitConfig(model=replace(model, delta_input=False), batch_size=1024,
                     train=replace(train, betas=(0.0, 0.999)), **overrides)


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


def fit_model(data: str | os.PathLike, out_dir: str | os.PathLike,
              config: FitConfig | None = None, device: str | torch.device | None = None,
              resume: bool = False) -> TrajectoryModel:
    """Train ``config.model`` on the dataset folder ``data``; save it in ``out_dir``.

    The model records the split (seed, test and validation fractions) it was trained on, so
    evaluation scores it on its own test trajectories. Under ``torchrun`` every rank trains on
    its own batch order and rank 0 saves the model.
    """
    cfg = config or FitConfig()
    device = init_distributed(resolve_device(device))
    rank, _ = world()
    out = run_folder(out_dir, MODEL_FILE, resume)
    ds = TrajectoryDataset(data, context=cfg.model.context, test_fraction=cfg.test_fraction,
                           seed=cfg.split_seed, dtype="float32", val_fraction=cfg.val_fraction)
    own = ds.metadata["trajebm"]
    mcfg = replace(cfg.model, state_dim=ds.state_dim, action_dim=ds.action_dim)
    cfg = replace(cfg, model=mcfg)
    meta = {"dataset_id": ds.metadata.get("dataset_id"), "env_id": own["env_id"],
            "state_names": own["state_names"], "dataset_path": str(data), "split": ds.split,
            "normalization_floored": [own["state_names"][i] for i in ds.state_stats.floored]}
    seed_everything(cfg.seed)
    model = build_model(mcfg, ds.state_stats.mean, ds.state_stats.std, meta)
    batches = TrajectoryBatches(
        ds, cfg.batch_size, seed=cfg.seed + rank, model=model,
        context_noise=cfg.context_noise, rollout_fraction=cfg.rollout_fraction,
        rollout_horizon=cfg.rollout_horizon, rollout_every=cfg.rollout_every,
        rollout_start=cfg.rollout_start)
    contrastive = mcfg.kind == "ebm" and mcfg.objective == "cd"
    tcfg = replace(cfg.train, sampler=mcfg.sampler, adam_clip=contrastive,
                   negatives_cond="buffer" if cfg.replay_prob > 0 else "data")
    validate = None
    if tcfg.validate_every:
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
    if contrastive:
        buffer = ReplayBuffer(cfg.buffer_capacity, (mcfg.out_dim,), context_init(model),
                              cond_shape=(mcfg.cond_dim,), replay_prob=cfg.replay_prob,
                              seed=cfg.seed)
        aux = model.proposal_loss if mcfg.proposal else None
        trainer = Trainer(model, batches, buffer, tcfg, out, device, validate=validate,
                          aux_loss=aux)
    else:
        trainer = Trainer(model, batches, None, tcfg, out, device, loss_fn=model.loss,
                          validate=validate)
    summary = trainer.fit(resume=resume)
    if contrastive and (message := collapse_message(summary)) is not None:
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
    longer reach the data and rollouts diverge. ``collapse_gap`` in the trainer acts on it.
    """
    gap = summary.get("e_neg", 0.0) - summary.get("e_pos", 0.0)
    if gap <= COLLAPSE_GAP:
        return None
    return (f"EBM collapsed: final E(negatives) - E(data) = {gap:.2f} > {COLLAPSE_GAP}; its "
            f"samples no longer reach the data. Train fewer steps (metrics.csv shows when the "
            f"gap opened), lower the lr or set a collapse guard (--collapse-gap).")


_CD = {"kind": "ebm", "objective": "cd", "activation": "lrelu", "proposal": False,
       "init_noise": 0.3}
_DSM = {"kind": "ebm", "objective": "dsm", "activation": "silu"}
_BASELINE = {"conditional": True, "residual": True, "activation": "lrelu"}
VARIANTS: dict[str, dict[str, Any]] = {
    "ebm": {**_CD, "conditional": True},
    "ebm-uncond": {**_CD, "conditional": False},
    "ebm-paper": {**_CD, "conditional": True, "paper": True},
    "ebm-proposal": {**_CD, "conditional": True, "proposal": True, "init_noise": 0.1},
    "ebm-dsm": {**_DSM, "conditional": True},
    "ebm-dsm-uncond": {**_DSM, "conditional": False},
    "fc": {**_BASELINE, "kind": "fc"},
    "fc-paper": {**_BASELINE, "kind": "fc", "residual": False},
    "ensemble": {**_BASELINE, "kind": "ensemble"},
    "fc-uncond": {**_BASELINE, "kind": "fc", "conditional": False},
    "ensemble-uncond": {**_BASELINE, "kind": "ensemble", "conditional": False},
}
"""Named model variants: a base for :func:`variant_config` (``NAME:key=value,...``)."""

DEFAULT_MODEL = "ebm-proposal"
"""The variant ``trajebm train`` and the demo use: the best EBM of the README's comparison."""

MODEL_KEYS = {f for f in ModelConfig.__dataclass_fields__ if f not in ("state_dim",
                                                                       "action_dim")}
FIT_KEYS = {f for f in FitConfig.__dataclass_fields__ if f not in ("model", "train")}
TRAIN_KEYS = {f for f in TrainConfig.__dataclass_fields__ if f not in ("sampler", "betas")}
SAMPLER_KEYS = {"steps", "step_size", "noise", "temperature", "grad_clip", "step_size_end",
                "anneal_power"}


def variant_config(spec: str, base: FitConfig | None = None) -> FitConfig:
    """A :class:`FitConfig` from a variant spec ``NAME[:key=value,...]``.

    NAME is one of :data:`VARIANTS`; keys are fields of :class:`ModelConfig` (``segment=4``),
    :class:`FitConfig` (``context_noise=0.05``), the trainer's :class:`TrainConfig`
    (``steps=12000``, ``ema_decay=0.999``), ``beta1``, or the sampler's fields prefixed with
    ``sampler_`` (``sampler_steps=40``). Values parse as int, float, bool (true/false) or None.
    """
    name, _, rest = spec.partition(":")
    if name not in VARIANTS:
        raise UsageError(f"unknown model {name!r}; choose from {', '.join(VARIANTS)} "
                         f"(optionally NAME:key=value,...)")
    settings = dict(VARIANTS[name])
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"{spec}: expected key=value, got {item!r}")
        settings[key.strip()] = _parse_value(value.strip())
    cfg = base or FitConfig()
    if settings.pop("paper", False):
        cfg = paper_fit_config(model=cfg.model, train=cfg.train)
    model, train, fit, sampler = {}, {}, {}, {}
    for key, value in settings.items():
        if key in MODEL_KEYS:
            model[key] = value
        elif key in FIT_KEYS:
            fit[key] = value
        elif key == "beta1":
            train["betas"] = (float(value), cfg.train.betas[1])
        elif key in TRAIN_KEYS:
            train[key] = value
        elif key.startswith("sampler_") and key[8:] in SAMPLER_KEYS:
            sampler[key[8:]] = value
        else:
            raise UsageError(f"{spec}: unknown setting {key!r}")
    try:
        mcfg = replace(cfg.model, **model)
        mcfg = replace(mcfg, sampler=replace(mcfg.sampler, **sampler))
        return replace(cfg, model=mcfg, train=replace(cfg.train, **train), **fit)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{spec}: {err}") from None


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def run_train(args: argparse.Namespace) -> int:
    cfg = variant_config(args.model)
    train = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("seed", args.seed))
             if v is not None}
    cfg = replace(cfg, train=replace(cfg.train, progress=not args.quiet, **train))
    if args.batch_size is not None:
        cfg = replace(cfg, batch_size=args.batch_size)
    fit_model(args.data, args.out, cfg, args.device, resume=args.resume)
    print(f"wrote {Path(args.out) / MODEL_FILE}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``trajebm train``."""
    p = subparsers.add_parser("train", help="train a trajectory model (any named variant)")
    p.add_argument("--data", required=True, help="dataset folder (from `trajebm collect`)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"NAME[:key=value,...], NAME one of {' '.join(VARIANTS)}; keys are "
                        f"fields of the model, fit or trainer config (e.g. "
                        f"ebm:context_noise=0.1,spectral_norm=true,sampler_steps=40)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--steps", type=int, default=None, help="training steps")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
