"""What every trajectory model shares: its config's common part and :class:`TrajectoryModel`.

A model sees ``k`` z-scored context states and (if action-conditional) the actions, and
proposes the next ``segment`` states (1 unless the kind predicts segments). It carries its
normalisation statistics and provenance (``meta``: state names, dataset id, the split it was
trained on), so a saved file is all a rollout needs; saving and loading live in
:mod:`trajebm.modelio`, the rollout loop in :mod:`trajebm.rollout`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from trajebm.engine.nets import ACTIVATIONS
from trajebm.engine.normalize import NormStats

DEFAULT_SPLIT = {"seed": 0, "test_fraction": 0.1}
"""The split of models saved before splits were recorded (the dataset reader's defaults)."""


@dataclass
class ModelConfig:
    """The settings every model kind has; a kind's config adds its own (``trajebm.models``)."""

    segment: ClassVar[int] = 1
    kind: str = field(default="", init=False)
    """The model kind (set by each kind's config)."""
    state_dim: int = 31
    """State width (filled in from the dataset)."""
    action_dim: int = 20
    """Action width (filled in from the dataset)."""
    context: int = 4
    """Context states k the model sees."""
    conditional: bool = True
    """Condition on the actions (False: an unconditional model of the states alone)."""
    hidden: int = 128
    """Width of the MLP's hidden layers."""
    layers: int = 3
    """Hidden layers of the MLP."""
    spectral_norm: bool = False
    """Spectral normalisation on the hidden layers."""
    activation: str = "lrelu"
    """Hidden activation: lrelu (leaky ReLU 0.2) or silu."""

    def __post_init__(self) -> None:
        for name in ("state_dim", "action_dim", "context", "hidden", "layers", "segment"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}")

    @property
    def cond_dim(self) -> int:
        """Width of the flattened condition: k context states, then the actions if any."""
        actions = self.segment * self.action_dim if self.conditional else 0
        return self.context * self.state_dim + actions

    @property
    def out_dim(self) -> int:
        """Width of one proposal: ``segment`` states."""
        return self.segment * self.state_dim


class TrajectoryModel(nn.Module):
    """Normalisation, condition layout, provenance and the one-proposal interface."""

    deterministic = False
    """Every proposal from one condition is the same (more samples would be copies)."""
    energy_based = False
    """Proposals are sampled from an energy, to which steering energies can be added."""

    def __init__(self, config: ModelConfig, state_mean: np.ndarray | None = None,
                 state_std: np.ndarray | None = None, meta: dict[str, Any] | None = None
                 ) -> None:
        super().__init__()
        self.config = config
        d = config.state_dim
        mean = torch.zeros(d) if state_mean is None else torch.as_tensor(state_mean)
        std = torch.ones(d) if state_std is None else torch.as_tensor(state_std)
        self.register_buffer("state_mean", mean.float().reshape(d))
        self.register_buffer("state_std", std.float().reshape(d))
        self.meta = dict(meta or {})

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def state_names(self) -> list[str] | None:
        return self.meta.get("state_names")

    @property
    def split(self) -> dict[str, Any]:
        """The train/test split it was trained on: ``{"seed", "test_fraction"}``."""
        split = self.meta.get("split") or DEFAULT_SPLIT
        return {k: split[k] for k in ("seed", "test_fraction")}

    @property
    def stats(self) -> NormStats:
        """The z-scoring the model was trained with (its buffers, on its device)."""
        return NormStats(self.state_mean, self.state_std)

    def normalize(self, states: Tensor) -> Tensor:
        return self.stats.normalize(states)

    def denormalize(self, z: Tensor) -> Tensor:
        return self.stats.denormalize(z)

    def make_cond(self, context: Tensor, actions: Tensor | None) -> Tensor:
        """Flatten z-scored context (N, k, D) and the actions (N, [segment,] A) into one row."""
        parts = [context.flatten(1)]
        if self.config.conditional:
            parts.append(actions.flatten(1))
        return torch.cat(parts, 1)

    def last_state(self, cond: Tensor) -> Tensor:
        """The most recent context state s_t (z-scored) inside a condition row."""
        k, d = self.config.context, self.config.state_dim
        return cond[:, (k - 1) * d : k * d]

    def anchor(self, cond: Tensor) -> Tensor:
        """s_t repeated for every state of a proposal: the origin of residual predictions."""
        return self.last_state(cond).repeat(1, self.config.segment)

    def propose(self, cond: Tensor, *, steps: int | None = None, temperature: float = 1.0,
                extra: Any = None, members: Tensor | None = None,
                compile: bool | str = False) -> Tensor:
        """One sampled z-scored proposal ``(N, segment * D)`` per condition row.

        ``steps``/``temperature`` tune an EBM's sampler or a flow's ODE (temperature also
        scales the ensemble's variance), ``extra(x, cond)`` is an energy added to an EBM's,
        ``members`` picks the ensemble member of each row, ``compile`` runs a contrastive EBM's
        Langevin steps compiled. Each kind ignores what does not apply to it.
        """
        raise NotImplementedError

    def loss(self, x: Tensor, cond: Tensor) -> Tensor:
        """The supervised training objective (contrastive EBMs train by the trainer's
        contrastive objective instead)."""
        raise NotImplementedError
