"""The one trainer of the project: EBMs (trajectories, images, toys) and their baselines.

Each EBM step: draw positives, start chains from the replay buffer (or fresh noise), run
Langevin, take the loss ``mean E(x+) - mean E(x-) + alpha (mean E(x+)^2 + mean E(x-)^2)`` (+
optional KL term), clip gradients to Adam's bound and update. Given a ``loss_fn`` instead (the
regression and likelihood baselines), a step minimises ``loss_fn(x, cond)`` with the same
optimiser, schedule, checkpoints and guards. Checkpoints hold everything needed to continue
exactly; a divergence guard rolls back to the last good checkpoint; under ``torchrun`` every rank
keeps its own buffer and gradients are averaged.
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from trajebm.engine.buffer import ReplayBuffer
from trajebm.engine.runinfo import atomic_torch_save
from trajebm.engine.sampling import LangevinConfig, langevin

Batch = tuple[Tensor, "Tensor | None"]
LossFn = Callable[[Tensor, "Tensor | None"], Tensor]
"""A supervised objective ``loss_fn(x, cond) -> scalar`` (uses the global torch RNG if any)."""


@dataclass
class TrainConfig:
    """Optimisation settings; defaults follow PAPER.md §1 (images).

    ``seed`` (+ the process rank) seeds Python, NumPy and torch when the trainer is built, so
    initialise the model before building the trainer (ranks > 0 get rank 0's weights anyway).
    """

    steps: int = 1000
    lr: float = 3e-4
    betas: tuple[float, float] = (0.0, 0.999)
    warmup_steps: int = 0
    cosine_decay: bool = False
    alpha: float = 1.0
    kl_weight: float = 0.0
    adam_clip: bool = True
    sampler: LangevinConfig = field(default_factory=LangevinConfig)
    negatives_cond: str = "data"
    seed: int = 0
    checkpoint_every: int = 200
    snapshot_every: int = 0
    snapshot_keep: int = 10
    log_every: int = 10
    max_rollbacks: int = 3
    rollback_lr_scale: float = 0.5
    energy_limit: float = 1e4
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.sampler, dict):
            self.sampler = LangevinConfig(**self.sampler)
        if self.negatives_cond not in ("data", "buffer"):
            raise ValueError(
                f"negatives_cond must be 'data' or 'buffer', not {self.negatives_cond!r}")
        if self.steps < 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("steps must be >= 0; checkpoint_every and log_every >= 1")
        if self.snapshot_every < 0 or self.snapshot_keep < 1:
            raise ValueError("snapshot_every must be >= 0 and snapshot_keep >= 1")


class Divergence(RuntimeError):
    """A training step produced non-finite or exploding values."""


class TrainingDiverged(RuntimeError):
    """Training kept diverging after the allowed number of rollbacks."""


def cd_loss(e_pos: Tensor, e_neg: Tensor, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """Contrastive divergence with the L2 energy penalty; returns (loss, penalty)."""
    penalty = e_pos.pow(2).mean() + e_neg.pow(2).mean()
    return e_pos.mean() - e_neg.mean() + alpha * penalty, penalty


@torch.no_grad()
def clip_to_adam_bound(optimizer: torch.optim.Adam) -> None:
    """Clip each gradient element to ±(3·sqrt(v̂) + 0.1), v̂ being Adam's corrected 2nd moment."""
    for group in optimizer.param_groups:
        beta2 = group["betas"][1]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state.get(p)
            if not state:
                p.grad.clamp_(-0.1, 0.1)
                continue
            v_hat = state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))
            bound = 3.0 * v_hat.sqrt() + 0.1
            p.grad.copy_(torch.minimum(torch.maximum(p.grad, -bound), bound))


class TensorBatches:
    """Endless shuffled mini-batches ``(x, cond)`` over tensors, resumable through its state.

    ``transform`` maps each batch of ``x`` on the way out (e.g. uint8 images to floats), so a
    large dataset can stay compact in memory.
    """

    def __init__(self, x: Tensor, cond: Tensor | None = None, batch_size: int = 128,
                 seed: int = 0, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        if cond is not None and len(cond) != len(x):
            raise ValueError(f"x has {len(x)} rows but cond has {len(cond)}")
        if not 1 <= batch_size:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.cond, self.batch_size = x, cond, min(batch_size, len(x))
        self.transform = transform
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(x), generator=self.generator)
        self.pos = 0

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.pos + self.batch_size > len(self.perm):
            self.perm = torch.randperm(len(self.x), generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        x = self.x[idx] if self.transform is None else self.transform(self.x[idx])
        return x, None if self.cond is None else self.cond[idx]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"], int(state["pos"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state, for exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def init_distributed(device: str | torch.device = "cpu") -> torch.device:
    """Join the ``torchrun`` process group when launched by it; return this rank's device.

    Without ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) this does nothing. NCCL is
    used for CUDA, gloo for CPU; each rank takes ``cuda:LOCAL_RANK``.
    """
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def world() -> tuple[int, int]:
    """(rank, world size) under torch.distributed, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def snapshot_paths(run_dir: str | os.PathLike) -> list[Path]:
    """A run's weight snapshots (``Trainer.save_snapshot``), oldest first."""
    return sorted((Path(run_dir) / "snapshots").glob("step*.pt"))


class Trainer:
    """Trains ``model`` (``model(x, cond) -> (B,)`` energies) by contrastive divergence.

    ``batches`` yields ``(x, cond)`` positives (cond None for unconditional models); giving it
    ``state_dict``/``load_state_dict`` (like :class:`TensorBatches`) makes resume exact.
    ``buffer`` supplies chain starts and holds the negatives. With ``loss_fn`` the model is
    trained on that objective instead (no buffer, no sampling). Outputs go to ``out_dir``:
    ``checkpoint.pt`` (``checkpoint.rank{r}.pt`` for ranks > 0), ``metrics.csv``, ``events.log``;
    with ``config.snapshot_every`` also ``snapshots/step{N}.pt`` (weights only, for ensembles).
    """

    def __init__(self, model: nn.Module, batches: Iterator[Batch], buffer: ReplayBuffer | None,
                 config: TrainConfig, out_dir: str | os.PathLike,
                 device: str | torch.device = "cpu", loss_fn: LossFn | None = None) -> None:
        if (buffer is None) == (loss_fn is None):
            raise ValueError("give the Trainer a replay buffer (EBM) or a loss_fn, not both")
        self.model, self.batches, self.buffer, self.config = model, batches, buffer, config
        self.loss_fn = loss_fn
        self.device = torch.device(device)
        self.out_dir = Path(out_dir)
        self.rank, self.world_size = world()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.step = 0
        self.rollbacks = 0
        self.lr_scale = 1.0
        self.tb = None
        seed_everything(config.seed + self.rank)
        if self.world_size > 1:
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, src=0)

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier: linear warm-up, then optionally a cosine decay to zero."""
        cfg = self.config
        factor = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
        if cfg.cosine_decay and step >= cfg.warmup_steps:
            progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
            factor *= 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return factor

    @property
    def checkpoint_path(self) -> Path:
        name = "checkpoint.pt" if self.rank == 0 else f"checkpoint.rank{self.rank}.pt"
        return self.out_dir / name

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimiser, buffer, data, RNGs, step."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "buffer": None if self.buffer is None else self.buffer.state_dict(),
            "batches": self.batches.state_dict() if hasattr(self.batches, "state_dict") else None,
            "rng": rng_state(),
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        if state["batches"] is not None and hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(state["batches"])
        set_rng_state(state["rng"])
        self.step, self.lr_scale = int(state["step"]), float(state["lr_scale"])
        self.rollbacks = int(state["rollbacks"])

    def save_checkpoint(self) -> Path:
        """Atomically write the current state to :attr:`checkpoint_path`."""
        return atomic_torch_save(self.state_dict(), self.checkpoint_path)

    def save_snapshot(self) -> Path:
        """Write the weights alone to ``snapshots/step{N}.pt``; keep the newest ``snapshot_keep``.

        The paper's evaluation sampler cycles chains through such snapshots (a historical
        ensemble, 10 checkpoints 300 iterations apart); see :func:`snapshot_paths`.
        """
        folder = self.out_dir / "snapshots"
        folder.mkdir(exist_ok=True)
        path = atomic_torch_save(self.model.state_dict(), folder / f"step{self.step:08d}.pt")
        for old in snapshot_paths(self.out_dir)[: -self.config.snapshot_keep]:
            old.unlink()
        return path

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> None:
        state = torch.load(path or self.checkpoint_path, map_location="cpu", weights_only=False)
        self.load_state_dict(state)

    def _allreduce_grads(self) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _any_rank(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def _update(self, loss: Tensor, stats: list[float]) -> None:
        """Backward, average across ranks, clip, check ``stats`` ([loss, ..., max |E|]), step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.world_size > 1:
            self._allreduce_grads()
        if self.config.adam_clip:
            clip_to_adam_bound(self.optimizer)
        bad = not all(math.isfinite(v) for v in stats) or stats[-1] > self.config.energy_limit
        if self._any_rank(bad):
            raise Divergence(f"step {self.step}: loss={stats[0]:.4g}, max |E|={stats[-1]:.4g}")
        self.optimizer.step()
        self.scheduler.step()

    def train_step(self) -> dict[str, float]:
        """One update; raises :class:`Divergence` before a bad update."""
        cfg = self.config
        x_pos, cond = next(self.batches)
        x_pos = x_pos.to(self.device)
        cond = None if cond is None else cond.to(self.device)
        if self.loss_fn is not None:
            loss = self.loss_fn(x_pos, cond)
            value = loss.detach().item()
            self._update(loss, [value, abs(value)])
            self.step += 1
            return {"loss": value, "lr": self.optimizer.param_groups[0]["lr"]}
        start = self.buffer.sample(len(x_pos), cond)
        c_neg = cond if cfg.negatives_cond == "data" or start.cond is None else start.cond
        c_neg = None if c_neg is None else c_neg.to(self.device)
        kl = cfg.kl_weight > 0
        x_neg = langevin(self.model, start.x.to(self.device), c_neg, cfg.sampler,
                         keep_last_graph=kl)
        both_cond = None if cond is None else torch.cat([cond, c_neg])
        energies = self.model(torch.cat([x_pos, x_neg.detach()]), both_cond)
        e_pos, e_neg = energies[: len(x_pos)], energies[len(x_pos):]
        loss, penalty = cd_loss(e_pos, e_neg, cfg.alpha)
        kl_term = torch.zeros((), device=self.device)
        if kl:
            frozen = {k: v.detach() for k, v in self.model.named_parameters()}
            kl_term = torch.func.functional_call(self.model, frozen, (x_neg, c_neg)).mean()
            loss = loss + cfg.kl_weight * kl_term
        stats = torch.stack([loss.detach(), e_pos.detach().mean(), e_neg.detach().mean(),
                             penalty.detach(), kl_term.detach(),
                             energies.detach().abs().max()]).tolist()
        self._update(loss, stats)
        self.buffer.push(x_neg.detach(), c_neg)
        self.step += 1
        return {"loss": stats[0], "e_pos": stats[1], "e_neg": stats[2], "l2": stats[3],
                "kl": stats[4], "lr": self.optimizer.param_groups[0]["lr"],
                "replayed": float(start.replayed.float().mean())}

    def _rollback(self, reason: Divergence) -> None:
        self.rollbacks += 1
        count = self.rollbacks
        if count > self.config.max_rollbacks:
            raise TrainingDiverged(
                f"training diverged {count} times (last: {reason}); gave up after "
                f"{self.config.max_rollbacks} rollbacks. Try a lower lr, more Langevin steps or "
                f"a larger alpha; the last good state is in {self.checkpoint_path}")
        self.load_checkpoint()
        self.rollbacks = count
        self.lr_scale = self.config.rollback_lr_scale**count
        base = self.config.lr * self.lr_scale
        self.scheduler.base_lrs = [base] * len(self.optimizer.param_groups)
        factor = self.lr_factor(self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = base * factor
        new_seed = self.config.seed + self.rank + 1_000_003 * count
        seed_everything(new_seed)
        if self.buffer is not None:
            self.buffer.generator.manual_seed(new_seed)
        self._event(f"rollback {count}: {reason}; restored step {self.step}, reseeded {new_seed}, "
                    f"lr scale {self.lr_scale:g}")

    def _event(self, message: str) -> None:
        if self.rank != 0:
            return
        tqdm.write(f"[trajebm] {message}")
        with open(self.out_dir / "events.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")

    def _open_log(self) -> tuple[Any, Any]:
        path = self.out_dir / "metrics.csv"
        rows = []
        if path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        f = open(path, "w", newline="")
        writer = None
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return f, writer

    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train until ``config.steps``; with ``resume`` continue from the checkpoint in out_dir."""
        cfg = self.config
        if resume and self.checkpoint_path.exists():
            self.load_checkpoint()
            self._event(f"resumed from {self.checkpoint_path} at step {self.step}")
        else:
            self.save_checkpoint()
        log_file, writer = self._open_log() if self.rank == 0 else (None, None)
        if cfg.tensorboard and self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(self.out_dir / "tensorboard")
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step",
                   disable=not cfg.progress or self.rank != 0, dynamic_ncols=True)
        last: dict[str, float] = {}
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                try:
                    last = self.train_step()
                except Divergence as err:
                    self._rollback(err)
                    bar.n = self.step
                    continue
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    last["sec_per_step"] = time.perf_counter() - t0
                    bar.set_postfix({k: f"{last[k]:.3f}" for k in ("loss", "e_pos", "e_neg")
                                     if k in last})
                    if writer is None and log_file is not None:
                        writer = csv.DictWriter(log_file, fieldnames=["step", *last])
                        writer.writeheader()
                    if writer is not None:
                        writer.writerow({"step": self.step, **last})
                        log_file.flush()
                    if self.tb is not None:
                        for k, v in last.items():
                            self.tb.add_scalar(k, v, self.step)
                if (cfg.snapshot_every and self.rank == 0
                        and self.step % cfg.snapshot_every == 0):
                    self.save_snapshot()
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save_checkpoint()
        finally:
            bar.close()
            if log_file is not None:
                log_file.close()
            if self.tb is not None:
                self.tb.close()
        return {"step": self.step, "rollbacks": self.rollbacks, **last}
