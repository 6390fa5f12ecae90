"""The one trainer of the project: every model of both packages, EBM or baseline.

A step: take a batch, let the objective compute the loss (:mod:`.objectives`: contrastive
divergence against Langevin samples, or a supervised loss), back-propagate, refuse the update
if anything is non-finite or exploding, clip to Adam's bound (the paper's), step, update the
EMA. Around the steps: exact-resume checkpoints (:mod:`.checkpoint`), a divergence guard that
rolls back to the last good checkpoint, held-out validation with best-weights selection,
metrics (:mod:`.logs`) and, under ``torchrun``, DistributedDataParallel (:mod:`.distributed`).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import atomic_torch_save
from trajebm.engine.train.batches import Batch
from trajebm.engine.train.checkpoint import (
    RunFiles,
    read_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
)
from trajebm.engine.train.config import TrainConfig
from trajebm.engine.train.distributed import Ranks
from trajebm.engine.train.logs import MetricsLog, log_event
from trajebm.engine.train.objectives import Objective, StepResult
from trajebm.engine.train.optim import EMA, clip_to_adam_bound, lr_factor, weights

ValidateFn = Callable[[nn.Module], dict[str, float]]
"""``validate(model) -> {name: value}`` on held-out data; may use autograd (e.g. Langevin)."""


class Divergence(RuntimeError):
    """A training step produced non-finite or exploding values, or the model collapsed."""


class TrainingDiverged(RuntimeError):
    """Training kept diverging after the allowed number of rollbacks."""


class Trainer:
    """Trains ``model`` on ``objective`` with batches ``(x, cond)`` into ``out_dir``.

    ``batches`` with ``state_dict``/``load_state_dict`` (like :class:`TensorBatches`) and
    ``reseed`` make resume exact. Outputs: ``checkpoint.pt`` (``checkpoint.rank{r}.pt`` for
    ranks > 0), ``metrics.csv``, ``events.log``; with ``config.snapshot_every`` also
    ``snapshots/step{N}.pt`` (weights only); with ``validate`` and ``config.select_by`` also
    ``best.pt`` (the best weights, EMA if on). ``validate(model)`` runs on rank 0 in eval mode
    (EMA weights swapped in) inside a forked RNG, so a run with validation trains exactly as
    the same run without it; its values are logged as ``val_<key>``. Seeding (``config.seed``
    plus the rank) happens here, so initialise the model before building the trainer (ranks
    > 0 get rank 0's weights anyway).
    """

    def __init__(self, model: nn.Module, batches: Iterator[Batch], objective: Objective,
                 config: TrainConfig, out_dir: str | os.PathLike,
                 device: str | torch.device = "cpu", validate: ValidateFn | None = None) -> None:
        self.model, self.batches, self.objective = model, batches, objective
        self.config, self.validate = config, validate
        self.device = torch.device(device)
        self.out_dir = Path(out_dir)
        self.ranks = Ranks(self.device)
        self.rank = self.ranks.rank
        self.files = RunFiles(self.out_dir, self.ranks)
        self.model.to(self.device)
        objective.attach(self.device)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.step, self.rollbacks, self.lr_scale = 0, 0, 1.0
        self.best_step: int | None = None
        self.best_value = math.inf
        self._reseed(config.seed + self.rank)
        if hasattr(batches, "reseed"):
            batches.reseed(config.seed + self.rank)
        self.net: nn.Module = objective.module
        if self.ranks.size > 1:  # broadcasts rank 0's weights; the same parameters are used
            ids = [self.device.index] if self.device.type == "cuda" else None  # every step
            self.net = DistributedDataParallel(self.net, device_ids=ids, static_graph=True)
        self.ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
        self.adam_clip = objective.adam_clip if config.adam_clip is None else config.adam_clip

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier: linear warm-up, then optionally a cosine decay to zero."""
        return lr_factor(self.config, step)

    @property
    def checkpoint_path(self) -> Path:
        return self.files.checkpoint

    @property
    def best_path(self) -> Path:
        return self.files.best

    def ema_state_dict(self) -> dict[str, Tensor] | None:
        """The EMA of the weights (buffers copied), the weights to sample with; None when off."""
        return None if self.ema is None else {k: v.clone() for k, v in self.ema.average.items()}

    def best_state_dict(self) -> dict[str, Tensor] | None:
        """The weights of the best validation so far (from ``best.pt``); None if none yet."""
        if self.best_step is None or not self.best_path.exists():
            return None
        return torch.load(self.best_path, map_location="cpu", weights_only=True)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimiser, objective, data, RNGs."""
        own = self.objective.state_dict()
        return {
            "step": self.step, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "buffer": own.pop("buffer"),
            "batches": self.batches.state_dict() if hasattr(self.batches, "state_dict") else None,
            "rng": rng_state(), "lr_scale": self.lr_scale, "rollbacks": self.rollbacks,
            "config": asdict(self.config), "ema": None if self.ema is None else self.ema.average,
            "best_step": self.best_step, "best_value": self.best_value, **own}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.objective.load_state_dict(state)
        if state["batches"] is not None and hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(state["batches"])
        set_rng_state(state["rng"])
        self.step, self.lr_scale = int(state["step"]), float(state["lr_scale"])
        self.rollbacks = int(state["rollbacks"])
        if self.ema is not None:
            self.ema.load(state.get("ema"), self.device)
        self.best_step = state.get("best_step")
        self.best_value = float(state.get("best_value", math.inf))

    def save_checkpoint(self) -> Path:
        """Atomically write the current state, with its checksum, to the checkpoint."""
        return self.files.save(self.state_dict())

    def save_snapshot(self) -> Path:
        """Write the weights alone to ``snapshots/step{N}.pt``; keep the newest ``snapshot_keep``
        (the paper's evaluation sampler cycles chains through such a historical ensemble)."""
        return self.files.save_snapshot(self.model.state_dict(), self.step,
                                        self.config.snapshot_keep)

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> None:
        """Restore the trainer from a checkpoint; UsageError naming the file if it is unusable."""
        path = Path(path or self.checkpoint_path)
        self._apply(path, read_checkpoint(path))

    def _apply(self, path: Path, state: dict[str, Any]) -> None:
        try:
            self.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"{path} does not fit this run ({reason})") from err

    def _reseed(self, seed: int) -> None:
        seed_everything(seed)
        self.objective.reseed(seed)

    def _check_finite_state(self) -> None:
        """Raise :class:`Divergence` rather than save non-finite weights or optimiser state."""
        parts = {f"weight {k}": v for k, v in self.model.state_dict().items()}
        parts.update({f"EMA {k}": v for k, v in (self.ema.average if self.ema else {}).items()})
        for i, s in enumerate(self.optimizer.state.values()):
            parts.update({f"optimiser state {i}.{k}": v for k, v in s.items()
                          if torch.is_tensor(v)})
        bad = next((name for name, t in parts.items()
                    if t.is_floating_point() and not torch.isfinite(t).all()), None)
        if self.ranks.any(bad is not None):
            raise Divergence(f"step {self.step}: non-finite {bad or 'state on another rank'}; "
                             f"not saving it")

    def _bad_update(self, result: StepResult) -> str | None:
        """Why this step's update must not be applied, or None."""
        values = [v for k, v in result.row.items() if k != "lr"] + [result.magnitude]
        if not all(math.isfinite(v) for v in values) or \
                result.magnitude > self.config.energy_limit:
            return (f"step {self.step + 1}: loss={result.row['loss']:.4g}, "
                    f"max |E|={result.magnitude:.4g}")
        named = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        if named and not torch.stack([torch.isfinite(g).all() for _, g in named]).all():
            bad = next(n for n, g in named if not torch.isfinite(g).all())
            return f"step {self.step + 1}: non-finite gradient in {bad}"
        return None

    def train_step(self) -> dict[str, float]:
        """One update; raises :class:`Divergence` before a bad update."""
        x, cond = next(self.batches)
        x = x.to(self.device)
        cond = None if cond is None else cond.to(self.device)
        self.model.train()
        self.objective.at_step(self.step, self.config.steps)
        result = self.objective.step(self.net, x, cond)
        self.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        reason = (f"step {self.step + 1}: {result.reason}" if result.reason
                  else self._bad_update(result))
        if self.ranks.any(reason is not None):
            raise Divergence(reason or f"step {self.step + 1}: another rank diverged")
        if self.adam_clip:
            clip_to_adam_bound(self.optimizer)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update()
        self.objective.commit()
        self.step += 1
        return {**result.row, "lr": self.optimizer.param_groups[0]["lr"]}

    def run_validation(self) -> dict[str, float]:
        """``validate(model)`` on rank 0 (EMA weights in, eval mode, every RNG restored after:
        training is unchanged), its values shared with every rank."""
        values = None
        if self.rank == 0:
            saved = weights(self.model) if self.ema is not None else None
            if self.ema is not None:
                self.model.load_state_dict(self.ema.average)
            py, npy = random.getstate(), np.random.get_state()
            cuda = [self.device.index or 0] if self.device.type == "cuda" else []
            self.model.eval()
            try:
                with torch.random.fork_rng(devices=cuda):
                    values = {k: float(v) for k, v in self.validate(self.model).items()}
            finally:
                random.setstate(py)
                np.random.set_state(npy)
                self.model.train()
                if saved is not None:
                    self.model.load_state_dict(saved)
        return self.ranks.broadcast(values)

    def _select(self, values: dict[str, float]) -> None:
        """Keep ``best.pt`` when ``values[select_by]`` beats the best so far (lower is better)."""
        key = self.config.select_by
        if key is None:
            return
        if key not in values:
            raise ValueError(f"select_by={key!r} is not among validate's values {list(values)}")
        if values[key] < self.best_value:
            self.best_step, self.best_value = self.step, values[key]
            if self.rank == 0:
                best = self.ema.average if self.ema is not None else self.model.state_dict()
                atomic_torch_save(best, self.best_path)

    def _rollback(self, reason: Divergence) -> None:
        """Back to the last checkpoint, reseeded, with a lower learning rate."""
        self.rollbacks += 1
        count, cfg = self.rollbacks, self.config
        if count > cfg.max_rollbacks:
            raise TrainingDiverged(
                f"training diverged {count} times (last: {reason}); gave up after "
                f"{cfg.max_rollbacks} rollbacks. Try a lower lr, more Langevin steps or "
                f"a larger alpha; the last good state is in {self.checkpoint_path}")
        best = self.best_step, self.best_value
        self.load_checkpoint()
        self.best_step, self.best_value = best  # best.pt may be newer than the checkpoint
        self.objective.reset_guards()
        self.rollbacks = count
        self.lr_scale = cfg.rollback_lr_scale**count
        base = cfg.lr * self.lr_scale
        self.scheduler.base_lrs = [base] * len(self.optimizer.param_groups)
        factor = self.lr_factor(self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = base * factor
        new_seed = cfg.seed + self.rank + 1_000_003 * count
        self._reseed(new_seed)
        self._event(f"rollback {count}: {reason}; restored step {self.step}, reseeded {new_seed}, "
                    f"lr scale {self.lr_scale:g}")

    def _event(self, message: str) -> None:
        if self.rank == 0:
            log_event(self.out_dir, message)

    def _start(self, resume: bool) -> None:
        """Fresh (checkpoint step 0) or resumed from the checkpoint every rank agrees on."""
        self.files.remove_stale_temps()
        state = self.files.resume_state(resume)
        if state is None:
            self._check_finite_state()
            self.save_checkpoint()
            return
        error = None
        try:
            self._apply(self.checkpoint_path, state)
        except UsageError as err:
            error = err
        if self.ranks.any(error is not None):  # every rank stops, none waits for the others
            raise error or UsageError("another rank's checkpoint does not fit this run")
        self._event(f"resumed from {self.checkpoint_path} at step {self.step}")
        if state["batches"] is None or not hasattr(self.batches, "load_state_dict"):
            self._event("the batches have no saved state: their order restarts, so this resumed "
                        "run differs from an unbroken one")

    def _step_and_validate(self) -> tuple[dict[str, float], dict[str, float], bool]:
        """One step, then validation when due: (row, validation values, checkpoint due)."""
        cfg = self.config
        row = self.train_step()
        step, end = self.step, self.step == cfg.steps
        checkpoint = step % cfg.checkpoint_every == 0 or end
        snapshot = bool(cfg.snapshot_every) and step % cfg.snapshot_every == 0
        validating = self.validate is not None and (
            end or bool(cfg.validate_every and step % cfg.validate_every == 0))
        if checkpoint or snapshot or validating:
            self._check_finite_state()
        values = self.run_validation() if validating else {}
        if snapshot and self.rank == 0:
            self.save_snapshot()
        return row, values, checkpoint

    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train until ``config.steps``; with ``resume`` continue from the checkpoint in out_dir.

        Without ``resume`` a folder already holding a checkpoint is refused (UsageError).
        """
        cfg = self.config
        self.objective.attach(self.device)
        self._start(resume)
        log = MetricsLog(self.out_dir / "metrics.csv", self.step, cfg.tensorboard) \
            if self.rank == 0 else None
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step",
                   disable=not cfg.progress or self.rank != 0, dynamic_ncols=True)
        last: dict[str, float] = {}
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                try:
                    last, values, checkpoint = self._step_and_validate()
                except Divergence as err:
                    self._rollback(err)
                    if log is not None:
                        log.truncate(self.step)
                    bar.n = self.step
                    continue
                bar.update(1)
                last.update({k if k.startswith("val_") else f"val_{k}": v
                             for k, v in values.items()})
                if self.step % cfg.log_every == 0 or self.step == cfg.steps or values:
                    last["sec_per_step"] = time.perf_counter() - t0
                    bar.set_postfix({k: f"{last[k]:.3f}" for k in ("loss", "e_pos", "e_neg")
                                     if k in last})
                    if log is not None:
                        log.write({"step": self.step, **last})
                if values:
                    self._select(values)
                if checkpoint:
                    self.save_checkpoint()
        finally:
            bar.close()
            self.objective.detach()
            if log is not None:
                log.close()
        best = {} if self.best_step is None else {"best_step": self.best_step,
                                                  "best_value": self.best_value}
        return {"step": self.step, "rollbacks": self.rollbacks, **last, **best}
