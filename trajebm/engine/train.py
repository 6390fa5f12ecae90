"""The one trainer of the project: EBMs (trajectories, images, toys) and their baselines.

Each EBM step: draw positives, start chains from the replay buffer (or fresh noise), run
Langevin, take the loss ``mean E(x+) - mean E(x-) + alpha (mean E(x+)^2 + mean E(x-)^2)`` (+
optional KL term), clip gradients to Adam's bound and update. Given a ``loss_fn`` instead (the
regression and likelihood baselines), a step minimises ``loss_fn(x, cond)`` with the same
optimiser, schedule, checkpoints and guards. Checkpoints hold everything needed to continue
exactly; a divergence guard rolls back to the last good checkpoint; under ``torchrun`` the model
is wrapped in DistributedDataParallel and every rank keeps its own buffer and data order.
Optional: an EMA of the weights, held-out validation with best-checkpoint selection, and a
collapse guard.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from trajebm.engine.buffer import ReplayBuffer
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import atomic_torch_save, atomic_write_bytes
from trajebm.engine.sampling import LangevinConfig, langevin

Batch = tuple[Tensor, "Tensor | None"]
LossFn = Callable[[Tensor, "Tensor | None"], Tensor]
"""A supervised objective ``loss_fn(x, cond) -> scalar`` (uses the global torch RNG if any)."""
ValidateFn = Callable[[nn.Module], dict[str, float]]
"""``validate(model) -> {name: value}`` on held-out data; may use autograd (e.g. Langevin)."""

CHECKPOINT_KEYS = ("step", "model", "optimizer", "scheduler", "buffer", "batches", "rng",
                   "lr_scale", "rollbacks")


@dataclass
class TrainConfig:
    """Optimisation settings; defaults follow PAPER.md §1 (images).

    ``seed`` (+ the process rank) seeds Python, NumPy and torch, the replay buffer's generator
    and the batches' order (when they have ``reseed``) when the trainer is built, so initialise
    the model before building the trainer (ranks > 0 get rank 0's weights anyway).

    ``ema_decay`` > 0 keeps an exponential moving average of the weights (the weights to sample
    with). ``validate_every`` N calls the trainer's ``validate`` every N steps and at the end
    (0: only at the end); ``select_by`` names the validation value (lower is better) that picks
    ``best.pt``. ``collapse_gap`` rolls back when the mean of ``e_neg - e_pos`` over the last
    ``collapse_window`` steps exceeds it (data and samples separated outright).

    ``compile`` runs the Langevin chains compiled (``LangevinConfig.compile``: True or a
    ``torch.compile`` mode, e.g. ``"reduce-overhead"`` for CUDA graphs); the sampler's own
    ``compile`` applies too. Eager (False) is the reference; a compiled run resumes exactly.
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
    ema_decay: float = 0.0
    validate_every: int = 0
    select_by: str | None = None
    collapse_gap: float | None = None
    collapse_window: int = 50
    compile: bool | str = False

    def __post_init__(self) -> None:
        if isinstance(self.sampler, dict):
            self.sampler = LangevinConfig(**self.sampler)
        replace(self.sampler, compile=self.compile)  # the sampler checks the mode
        if self.negatives_cond not in ("data", "buffer"):
            raise ValueError(
                f"negatives_cond must be 'data' or 'buffer', not {self.negatives_cond!r}")
        if self.steps < 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("steps must be >= 0; checkpoint_every and log_every >= 1")
        if self.snapshot_every < 0 or self.snapshot_keep < 1:
            raise ValueError("snapshot_every must be >= 0 and snapshot_keep >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.validate_every < 0:
            raise ValueError(f"validate_every must be >= 0, got {self.validate_every}")
        if self.collapse_gap is not None and self.collapse_gap <= 0:
            raise ValueError(f"collapse_gap must be positive or None, got {self.collapse_gap}")
        if self.collapse_window < 1:
            raise ValueError(f"collapse_window must be >= 1, got {self.collapse_window}")


class Divergence(RuntimeError):
    """A training step produced non-finite or exploding values, or the model collapsed."""


class TrainingDiverged(RuntimeError):
    """Training kept diverging after the allowed number of rollbacks."""


def cd_loss(e_pos: Tensor, e_neg: Tensor, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """Contrastive divergence with the L2 energy penalty; returns (loss, penalty)."""
    penalty = e_pos.pow(2).mean() + e_neg.pow(2).mean()
    return e_pos.mean() - e_neg.mean() + alpha * penalty, penalty


@torch.no_grad()
def clip_to_adam_bound(optimizer: torch.optim.Adam) -> None:
    """Clip each gradient element to ±(3·sqrt(v̂) + 0.1), v̂ being Adam's corrected 2nd moment.

    Uses multi-tensor (``torch._foreach_*``) ops: a handful of kernels for all parameters
    instead of several per parameter, which dominates for small models and on a GPU.
    """
    for group in optimizer.param_groups:
        beta2 = group["betas"][1]
        fresh, grads, second, corrections = [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state.get(p)
            if not state:
                fresh.append(p.grad)
                continue
            grads.append(p.grad)
            second.append(state["exp_avg_sq"])
            corrections.append(1 - beta2 ** float(state["step"]))
        if fresh:
            torch._foreach_clamp_min_(fresh, -0.1)
            torch._foreach_clamp_max_(fresh, 0.1)
        if grads:
            bound = torch._foreach_div(second, corrections)
            torch._foreach_sqrt_(bound)
            torch._foreach_mul_(bound, 3.0)
            torch._foreach_add_(bound, 0.1)
            torch._foreach_maximum_(grads, torch._foreach_neg(bound))
            torch._foreach_minimum_(grads, bound)


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
        self.generator = torch.Generator()
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Start a fresh order from ``seed`` (the trainer passes ``config.seed + rank``)."""
        self.generator.manual_seed(seed)
        self.perm = torch.randperm(len(self.x), generator=self.generator)
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


def checkpoint_name(rank: int) -> str:
    """The checkpoint file of a rank: ``checkpoint.pt`` for rank 0, ``checkpoint.rank{r}.pt``."""
    return "checkpoint.pt" if rank == 0 else f"checkpoint.rank{rank}.pt"


def snapshot_paths(run_dir: str | os.PathLike) -> list[Path]:
    """A run's weight snapshots (``Trainer.save_snapshot``), oldest first."""
    return sorted((Path(run_dir) / "snapshots").glob("step*.pt"))


def checksum(obj: Any, crc: int = 0) -> int:
    """CRC32 of a nested state (tensor and array bytes, the repr of keys and other leaves).

    Stored in checkpoints: torch.load does not notice damage inside tensor data; this does.
    """
    if torch.is_tensor(obj):
        obj = obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    if isinstance(obj, np.ndarray):
        crc = zlib.crc32(f"{obj.dtype.str}{obj.shape}".encode(), crc)
        return zlib.crc32(np.ascontiguousarray(obj).tobytes(), crc)
    if isinstance(obj, dict):
        for k, v in obj.items():
            crc = checksum(v, zlib.crc32(repr(k).encode(), crc))
        return crc
    if isinstance(obj, (list, tuple)):
        for v in obj:
            crc = checksum(v, crc)
        return crc
    return zlib.crc32(repr(obj).encode(), crc)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A trainer checkpoint's contents; UsageError naming the file if it is not one."""
    path = Path(path)
    unreadable = (f"{path} is not a readable checkpoint (truncated or corrupted: {{}}); delete "
                  f"the run's checkpoints to start over")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file
        raise UsageError(unreadable.format(type(err).__name__)) from err
    if not isinstance(state, dict) or not all(k in state for k in CHECKPOINT_KEYS):
        raise UsageError(f"{path} is not a trainer checkpoint")
    stored = state.pop("checksum", None)
    if stored is not None and stored != checksum(state):
        raise UsageError(unreadable.format("checksum mismatch"))
    return state


class _Objective(nn.Module):
    """``loss_fn`` as a module over ``model``'s parameters, so DDP sees the loss's forward."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        return self.loss_fn(x, cond)


class _EnergiesAndAux(nn.Module):
    """The EBM's energies and an auxiliary loss on the positives in one forward (seen by DDP)."""

    def __init__(self, model: nn.Module, aux_loss: LossFn) -> None:
        super().__init__()
        self.model, self.aux_loss = model, aux_loss

    def forward(self, x: Tensor, cond: Tensor | None, positives: int) -> tuple[Tensor, Tensor]:
        pos_cond = None if cond is None else cond[:positives]
        return self.model(x, cond), self.aux_loss(x[:positives], pos_cond)


class _MetricsLog:
    """``metrics.csv``: one row per logged step, cut back to a step on resume and rollback."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.fields, self.rows, self.file = path, [], [], None
        if path.exists():
            text = path.read_text()
            reader = csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1]))  # no cut line
            self.fields, self.rows = list(reader.fieldnames or []), list(reader)
        self.truncate(step)

    def truncate(self, step: int) -> None:
        """Drop the rows after ``step`` and rewrite the file atomically."""
        self.rows = [r for r in self.rows if int(r["step"]) <= step]
        if not self.rows:
            self.fields = []
        if self.file is not None:
            self.file.close()
        text = io.StringIO()
        if self.fields:
            writer = csv.DictWriter(text, self.fields)
            writer.writeheader()
            writer.writerows(self.rows)
        atomic_write_bytes(self.path, text.getvalue().encode())
        self.file = open(self.path, "a", newline="")

    def write(self, row: dict[str, float]) -> None:
        new = [k for k in row if k not in self.fields]
        self.rows.append(row)
        if new:
            self.fields += new
            self.truncate(int(row["step"]))
            return
        csv.DictWriter(self.file, self.fields).writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class Trainer:
    """Trains ``model`` (``model(x, cond) -> (B,)`` energies) by contrastive divergence.

    ``batches`` yields ``(x, cond)`` positives (cond None for unconditional models); giving it
    ``state_dict``/``load_state_dict`` (like :class:`TensorBatches`) makes resume exact.
    ``buffer`` supplies chain starts and holds the negatives. With ``loss_fn`` the model is
    trained on that objective instead (no buffer, no sampling). Outputs go to ``out_dir``:
    ``checkpoint.pt`` (``checkpoint.rank{r}.pt`` for ranks > 0), ``metrics.csv``, ``events.log``;
    with ``config.snapshot_every`` also ``snapshots/step{N}.pt`` (weights only, for ensembles);
    with ``validate`` and ``config.select_by`` also ``best.pt`` (the best weights, EMA if on;
    without ``validate`` nothing is validated or selected).

    Langevin chains run with the model in eval mode (no dropout, no spectral-norm power
    iteration), so every chain samples one fixed energy; the loss forward runs in train mode.
    Under ``torchrun`` only that loss forward goes through DistributedDataParallel (gradients
    averaged); chains call the plain module, so they never trigger a gradient sync.
    ``validate(model)`` runs on rank 0 in eval mode (EMA weights swapped in when EMA is on)
    inside a forked RNG, so a run with validation trains exactly as the same run without it;
    its values go to ``metrics.csv`` and TensorBoard as ``val_<key>`` (keys already starting
    with ``val_`` keep their name). ``aux_loss(x⁺, cond)`` (EBMs only) adds a supervised term on
    the positives to the contrastive loss, e.g. for a learned chain initialiser inside the model.
    """

    def __init__(self, model: nn.Module, batches: Iterator[Batch], buffer: ReplayBuffer | None,
                 config: TrainConfig, out_dir: str | os.PathLike,
                 device: str | torch.device = "cpu", loss_fn: LossFn | None = None,
                 validate: ValidateFn | None = None, aux_loss: LossFn | None = None) -> None:
        if (buffer is None) == (loss_fn is None):
            raise ValueError("give the Trainer a replay buffer (EBM) or a loss_fn, not both")
        if aux_loss is not None and buffer is None:
            raise ValueError("aux_loss adds to an EBM's contrastive loss; give a buffer")
        self.model, self.batches, self.buffer, self.config = model, batches, buffer, config
        self.loss_fn, self.validate = loss_fn, validate
        self.device = torch.device(device)
        self.out_dir = Path(out_dir)
        self.rank, self.world_size = world()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.model.to(self.device)
        self._buffer_home = None if buffer is None else buffer.device
        if buffer is not None:  # no host round trip per step; moved back when fit ends
            buffer.to(self.device)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.step = 0
        self.rollbacks = 0
        self.lr_scale = 1.0
        self.tb = None
        self.best_step: int | None = None
        self.best_value = math.inf
        self.gaps: deque[float] = deque(maxlen=config.collapse_window)
        seed = config.seed + self.rank
        seed_everything(seed)
        if buffer is not None:
            buffer.generator.manual_seed(seed)
        if hasattr(batches, "reseed"):
            batches.reseed(seed)
        self.aux_loss = aux_loss
        self.net: nn.Module = model
        if loss_fn is not None:  # late-bound, so a replaced self.loss_fn takes effect
            self.net = _Objective(model, lambda x, cond: self.loss_fn(x, cond))
        elif aux_loss is not None:
            self.net = _EnergiesAndAux(model, aux_loss)
        if self.world_size > 1:  # broadcasts rank 0's weights; the same parameters are used
            ids = [self.device.index] if self.device.type == "cuda" else None  # every step
            self.net = DistributedDataParallel(self.net, device_ids=ids, static_graph=True)
        self._param_names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        self.ema = self._weights() if config.ema_decay > 0 else None

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
        return self.out_dir / checkpoint_name(self.rank)

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def _weights(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def ema_state_dict(self) -> dict[str, Tensor] | None:
        """The EMA of the weights (buffers copied), the weights to sample with; None when off."""
        return None if self.ema is None else {k: v.clone() for k, v in self.ema.items()}

    def best_state_dict(self) -> dict[str, Tensor] | None:
        """The weights of the best validation so far (from ``best.pt``); None if none yet."""
        if self.best_step is None or not self.best_path.exists():
            return None
        return torch.load(self.best_path, map_location="cpu", weights_only=True)

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
            "ema": self.ema,
            "best_step": self.best_step,
            "best_value": self.best_value,
            "collapse_gaps": list(self.gaps),
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
        if self.ema is not None:
            saved = state.get("ema")
            self.ema = self._weights() if saved is None else {
                k: v.to(self.device).clone() for k, v in saved.items()}
        self.best_step = state.get("best_step")
        self.best_value = float(state.get("best_value", math.inf))
        self.gaps.clear()
        self.gaps.extend(state.get("collapse_gaps", []))

    def save_checkpoint(self) -> Path:
        """Atomically write the current state, with its :func:`checksum`, to the checkpoint."""
        state = self.state_dict()
        state["checksum"] = checksum(state)
        return atomic_torch_save(state, self.checkpoint_path)

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
        """Restore the trainer from a checkpoint; UsageError naming the file if it is unusable."""
        path = Path(path or self.checkpoint_path)
        self._apply(path, read_checkpoint(path))

    def _apply(self, path: Path, state: dict[str, Any]) -> None:
        try:
            self.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"{path} does not fit this run ({reason})") from err

    def _gather(self, value: int) -> list[int]:
        if self.world_size == 1:
            return [value]
        t = torch.tensor([value], device=self.device)
        out = [torch.zeros_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [int(v.item()) for v in out]

    def _any_rank(self, flag: bool) -> bool:
        return any(self._gather(int(flag)))

    def _resume_state(self, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to resume from (None: start fresh), agreed on by every rank.

        Without ``resume`` an existing checkpoint on any rank is refused. With it, either no
        rank has one (fresh start) or all have readable ones from the same step; anything
        else stops every rank with a UsageError naming the file.
        """
        path = self.checkpoint_path
        if not resume:
            found = [r for r, flag in enumerate(self._gather(int(path.exists()))) if flag]
            if found:
                raise UsageError(f"{self.out_dir} holds a run in progress "
                                 f"({checkpoint_name(found[0])}); pass resume=True (--resume) "
                                 f"or choose another folder")
            return None
        state, error = None, None
        if path.exists():
            try:
                state = read_checkpoint(path)
            except UsageError as err:
                error = err
        code = -1 if not path.exists() else -2 if state is None else int(state["step"])
        codes = self._gather(code)
        names = [self.out_dir / checkpoint_name(r) for r in range(self.world_size)]
        if all(c == -1 for c in codes):
            return None
        if error is not None:
            raise error
        if -2 in codes:
            raise UsageError(f"{names[codes.index(-2)]} is not a readable checkpoint (truncated "
                             f"or corrupted); delete the run's checkpoints to start over")
        if -1 in codes:
            good = next(c for c in codes if c >= 0)
            raise UsageError(f"cannot resume: {names[codes.index(-1)]} is missing while other "
                             f"ranks' checkpoints are at step {good}; every rank needs its own")
        if min(codes) != max(codes):
            stale = codes.index(min(codes))
            raise UsageError(f"cannot resume: {names[stale]} is at step {min(codes)} but "
                             f"{names[codes.index(max(codes))]} at step {max(codes)}; the "
                             f"ranks' checkpoints must come from the same step")
        return state

    def _remove_stale_temps(self) -> None:
        """Delete temp files a kill during an atomic write left behind (never read anyway)."""
        patterns = [f".{self.checkpoint_path.name}.*.tmp"]
        if self.rank == 0:
            patterns += [".best.pt.*.tmp", ".metrics.csv.*.tmp", "snapshots/.step*.pt.*.tmp"]
        for pattern in patterns:
            for tmp in self.out_dir.glob(pattern):
                tmp.unlink(missing_ok=True)

    def _check_finite_state(self) -> None:
        """Raise :class:`Divergence` rather than save non-finite weights or optimiser state."""
        parts = {f"weight {k}": v for k, v in self.model.state_dict().items()}
        parts.update({f"EMA {k}": v for k, v in (self.ema or {}).items()})
        for i, s in enumerate(self.optimizer.state.values()):
            parts.update({f"optimiser state {i}.{k}": v for k, v in s.items()
                          if torch.is_tensor(v)})
        bad = next((name for name, t in parts.items()
                    if t.is_floating_point() and not torch.isfinite(t).all()), None)
        if self._any_rank(bad is not None):
            raise Divergence(f"step {self.step}: non-finite {bad or 'state on another rank'}; "
                             f"not saving it")

    def _bad_update(self, stats: list[float]) -> str | None:
        """Why this step's update must not be applied (stats: [loss, ..., max |E|]), or None."""
        if not all(math.isfinite(v) for v in stats) or stats[-1] > self.config.energy_limit:
            return f"step {self.step + 1}: loss={stats[0]:.4g}, max |E|={stats[-1]:.4g}"
        named = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        if named and not torch.stack([torch.isfinite(g).all() for _, g in named]).all():
            bad = next(n for n, g in named if not torch.isfinite(g).all())
            return f"step {self.step + 1}: non-finite gradient in {bad}"
        return None

    def _update(self, loss: Tensor, stats: list[float], reason: str | None = None) -> None:
        """Backward (DDP averages across ranks), check, clip to Adam's bound, step, update EMA."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        reason = reason or self._bad_update(stats)
        if self._any_rank(reason is not None):
            raise Divergence(reason or f"step {self.step + 1}: another rank diverged")
        if self.config.adam_clip:
            clip_to_adam_bound(self.optimizer)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.config.ema_decay
        for k, v in self.model.state_dict().items():
            avg = self.ema[k]
            if k in self._param_names and avg.is_floating_point():
                avg.mul_(decay).add_(v, alpha=1.0 - decay)
            else:
                avg.copy_(v)

    def _collapse(self, e_pos: float, e_neg: float) -> str | None:
        """Why the model counts as collapsed (mean e_neg - e_pos over the window), or None."""
        cfg = self.config
        self.gaps.append(e_neg - e_pos)
        if cfg.collapse_gap is None or len(self.gaps) < cfg.collapse_window:
            return None
        gap = sum(self.gaps) / len(self.gaps)
        if gap <= cfg.collapse_gap:
            return None
        return (f"step {self.step + 1}: collapse: mean E(x-) - E(x+) over the last "
                f"{cfg.collapse_window} steps is {gap:.3f} > collapse_gap {cfg.collapse_gap:g} "
                f"(the model separates data from its samples; chains no longer reach the data)")

    def _chains(self, x: Tensor, cond: Tensor | None, kl: bool) -> Tensor:
        """The negatives: Langevin from ``x`` on the model (in eval mode).

        A model with ``chain_energy(cond) -> (energy, h)`` (an energy for a fixed condition
        with its per-condition work done once) is sampled through it, except when the KL term
        needs the last step's graph to reach every weight.
        """
        sampler = self.config.sampler
        if self.config.compile:
            sampler = replace(sampler, compile=self.config.compile)
        chain_energy = getattr(self.model, "chain_energy", None)
        if chain_energy is None or kl or cond is None:
            return langevin(self.model, x, cond, sampler, keep_last_graph=kl)
        energy, hidden = chain_energy(cond)
        return langevin(energy, x, hidden, sampler)

    def train_step(self) -> dict[str, float]:
        """One update; raises :class:`Divergence` before a bad update."""
        cfg = self.config
        x_pos, cond = next(self.batches)
        x_pos = x_pos.to(self.device)
        cond = None if cond is None else cond.to(self.device)
        self.model.train()
        if self.loss_fn is not None:
            loss = self.net(x_pos, cond)
            value = loss.detach().item()
            self._update(loss, [value, abs(value)])
            self.step += 1
            return {"loss": value, "lr": self.optimizer.param_groups[0]["lr"]}
        start = self.buffer.sample(len(x_pos), cond)
        c_neg = cond if cfg.negatives_cond == "data" or start.cond is None else start.cond
        c_neg = None if c_neg is None else c_neg.to(self.device)
        kl = cfg.kl_weight > 0
        self.model.eval()
        try:
            x_neg = self._chains(start.x.to(self.device), c_neg, kl)
        finally:
            self.model.train()
        both_cond = None if cond is None else torch.cat([cond, c_neg])
        x_all = torch.cat([x_pos, x_neg.detach()])
        aux = torch.zeros((), device=self.device)
        if self.aux_loss is None:
            energies = self.net(x_all, both_cond)
        else:
            energies, aux = self.net(x_all, both_cond, len(x_pos))
        e_pos, e_neg = energies[: len(x_pos)], energies[len(x_pos):]
        loss, penalty = cd_loss(e_pos, e_neg, cfg.alpha)
        loss = loss + aux
        kl_term = torch.zeros((), device=self.device)
        if kl:
            frozen = {k: v.detach() for k, v in self.model.named_parameters()}
            kl_term = torch.func.functional_call(self.model, frozen, (x_neg, c_neg)).mean()
            loss = loss + cfg.kl_weight * kl_term
        stats = torch.stack([loss.detach(), e_pos.detach().mean(), e_neg.detach().mean(),
                             penalty.detach(), kl_term.detach(), aux.detach(),
                             energies.detach().abs().max()]).tolist()
        self._update(loss, stats, self._collapse(stats[1], stats[2]))
        self.buffer.push(x_neg.detach(), c_neg)
        self.step += 1
        row = {"loss": stats[0], "e_pos": stats[1], "e_neg": stats[2], "l2": stats[3],
               "kl": stats[4], "lr": self.optimizer.param_groups[0]["lr"],
               "replayed": float(start.replayed.float().mean())}
        if self.aux_loss is not None:
            row["aux"] = stats[5]
        return row

    def run_validation(self) -> dict[str, float]:
        """``validate(model)`` on rank 0, its values shared with every rank.

        EMA weights in (when on), eval mode, every RNG restored after: training is unchanged.
        """
        values = None
        if self.rank == 0:
            saved = self._weights() if self.ema is not None else None
            if self.ema is not None:
                self.model.load_state_dict(self.ema)
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
        if self.world_size > 1:
            box = [values]
            dist.broadcast_object_list(box, src=0)
            values = box[0]
        return values

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
                weights = self.ema if self.ema is not None else self.model.state_dict()
                atomic_torch_save(weights, self.best_path)

    def _rollback(self, reason: Divergence) -> None:
        self.rollbacks += 1
        count = self.rollbacks
        if count > self.config.max_rollbacks:
            raise TrainingDiverged(
                f"training diverged {count} times (last: {reason}); gave up after "
                f"{self.config.max_rollbacks} rollbacks. Try a lower lr, more Langevin steps or "
                f"a larger alpha; the last good state is in {self.checkpoint_path}")
        best = self.best_step, self.best_value
        self.load_checkpoint()
        self.best_step, self.best_value = best  # best.pt may be newer than the checkpoint
        self.gaps.clear()
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

    def _start(self, resume: bool) -> None:
        self._remove_stale_temps()
        state = self._resume_state(resume)
        if state is None:
            self._check_finite_state()
            self.save_checkpoint()
            return
        error = None
        try:
            self._apply(self.checkpoint_path, state)
        except UsageError as err:
            error = err
        if self._any_rank(error is not None):  # every rank stops, none waits for the others
            raise error or UsageError("another rank's checkpoint does not fit this run")
        self._event(f"resumed from {self.checkpoint_path} at step {self.step}")
        if state["batches"] is None or not hasattr(self.batches, "load_state_dict"):
            self._event("the batches have no saved state: their order restarts, so this resumed "
                        "run differs from an unbroken one")

    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train until ``config.steps``; with ``resume`` continue from the checkpoint in out_dir.

        Without ``resume`` a folder already holding a checkpoint is refused (UsageError).
        """
        cfg = self.config
        if self.buffer is not None:
            self.buffer.to(self.device)
        self._start(resume)
        log = _MetricsLog(self.out_dir / "metrics.csv", self.step) if self.rank == 0 else None
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
                    step, end = self.step, self.step == cfg.steps
                    checkpoint = step % cfg.checkpoint_every == 0 or end
                    snapshot = cfg.snapshot_every and step % cfg.snapshot_every == 0
                    validating = self.validate is not None and (
                        end or (cfg.validate_every and step % cfg.validate_every == 0))
                    if checkpoint or snapshot or validating:
                        self._check_finite_state()
                    values = self.run_validation() if validating else {}
                except Divergence as err:
                    self._rollback(err)
                    if log is not None:
                        log.truncate(self.step)
                    bar.n = self.step
                    continue
                bar.update(1)
                last.update({k if k.startswith("val_") else f"val_{k}": v
                             for k, v in values.items()})
                if step % cfg.log_every == 0 or end or values:
                    last["sec_per_step"] = time.perf_counter() - t0
                    bar.set_postfix({k: f"{last[k]:.3f}" for k in ("loss", "e_pos", "e_neg")
                                     if k in last})
                    if log is not None:
                        log.write({"step": step, **last})
                    if self.tb is not None:
                        for k, v in last.items():
                            self.tb.add_scalar(k, v, step)
                if snapshot and self.rank == 0:
                    self.save_snapshot()
                if values:
                    self._select(values)
                if checkpoint:
                    self.save_checkpoint()
        finally:
            bar.close()
            if self.buffer is not None:
                self.buffer.to(self._buffer_home)
            if log is not None:
                log.close()
            if self.tb is not None:
                self.tb.close()
        best = {} if self.best_step is None else {"best_step": self.best_step,
                                                  "best_value": self.best_value}
        return {"step": self.step, "rollbacks": self.rollbacks, **last, **best}
