"""The trainer's settings: how to optimise (:class:`TrainConfig`) and, for an EBM, the
contrastive objective's own (:class:`ContrastiveConfig`). Defaults follow the paper's image
runs; each application sets its own in its named configs."""

from __future__ import annotations

import math
from dataclasses import dataclass

NEGATIVES_COND = ("data", "buffer")


@dataclass
class TrainConfig:
    """Optimisation, schedule, guards, checkpoints, logging and validation of a run."""

    steps: int = 1000
    """Training steps (optimiser updates)."""
    lr: float = 3e-4
    """Adam's learning rate."""
    betas: tuple[float, float] = (0.0, 0.999)
    """Adam's betas (the paper's beta1 = 0)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up over this many steps."""
    cosine_decay: bool = False
    """Decay the learning rate to zero along a cosine after the warm-up."""
    adam_clip: bool | None = None
    """Clip each gradient element to Adam's bound 3 sqrt(v) + 0.1 (the paper's EBM recipe);
    None: the objective decides (on for contrastive divergence, off for a supervised loss)."""
    seed: int = 0
    """Seeds Python, NumPy and torch (plus the rank), the objective's and the batches' order."""
    checkpoint_every: int = 200
    """Write the exact-resume checkpoint every N steps (and at the end)."""
    snapshot_every: int = 0
    """Keep the weights every N steps in snapshots/ (0: never), for historical ensembles."""
    snapshot_keep: int = 10
    """Snapshots kept (the newest)."""
    log_every: int = 10
    """Write a metrics.csv row every N steps."""
    max_rollbacks: int = 3
    """Divergences survived (roll back to the last checkpoint, reseed, lower the lr)."""
    rollback_lr_scale: float = 0.5
    """The learning rate's factor per rollback."""
    energy_limit: float = 1e4
    """A step whose largest |energy| (or |loss|) exceeds this counts as diverged."""
    tensorboard: bool = False
    """Also log to TensorBoard (the optional extra)."""
    progress: bool = True
    """Show a progress bar."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the weights with this decay (0: off)."""
    validate_every: int = 0
    """Validate every N steps and at the end (0: only at the end)."""
    select_by: str | None = None
    """The validation value (lower is better) whose best weights best.pt keeps."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("steps must be >= 0; checkpoint_every and log_every >= 1")
        if self.snapshot_every < 0 or self.snapshot_keep < 1:
            raise ValueError("snapshot_every must be >= 0 and snapshot_keep >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.validate_every < 0:
            raise ValueError(f"validate_every must be >= 0, got {self.validate_every}")


@dataclass
class ContrastiveConfig:
    """The contrastive-divergence objective of an EBM: its loss, replay buffer and guard.

    Loss: ``mean E(x+) - mean E(x-) + alpha (mean E(x+)^2 + mean E(x-)^2)``, plus
    ``kl_weight`` times the KL term of improved contrastive divergence.
    """

    alpha: float = 1.0
    """Weight of the L2 energy penalty (with ``alpha_end``: its weight at the first step)."""
    alpha_end: float | None = None
    """The penalty weight at the final step (None: ``alpha`` throughout). It moves from
    ``alpha`` geometrically (log-linear in the step) over the trainer's steps, so a high weight
    can keep the early model from collapsing and a low one sharpen its samples at the end."""
    kl_weight: float = 0.0
    """Weight of the KL term (0: off; it needs the chain's last step to keep its graph)."""
    buffer_size: int = 10000
    """Chains the replay buffer holds."""
    replay_prob: float = 0.95
    """Share of chains continued from the replay buffer (0: every chain starts fresh)."""
    negatives_cond: str = "data"
    """Condition of the negatives: the data batch's, or (``buffer``) the replayed chains' own."""
    collapse_gap: float | None = None
    """Roll back when mean E(x-) - E(x+) over the last ``collapse_window`` steps exceeds it."""
    collapse_window: int = 50
    """Steps the collapse guard averages over."""

    def __post_init__(self) -> None:
        if self.negatives_cond not in NEGATIVES_COND:
            raise ValueError(f"negatives_cond must be 'data' or 'buffer', not "
                             f"{self.negatives_cond!r}")
        if self.buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {self.buffer_size}")
        if not 0.0 <= self.replay_prob <= 1.0:
            raise ValueError(f"replay_prob must be in [0, 1], got {self.replay_prob}")
        if self.alpha_end is not None and not (0 < self.alpha_end < math.inf and self.alpha > 0):
            raise ValueError(f"alpha_end must be positive and finite (and alpha positive), got "
                             f"alpha_end={self.alpha_end}, alpha={self.alpha}")
        if self.collapse_gap is not None and self.collapse_gap <= 0:
            raise ValueError(f"collapse_gap must be positive or None, got {self.collapse_gap}")
        if self.collapse_window < 1:
            raise ValueError(f"collapse_window must be >= 1, got {self.collapse_window}")
