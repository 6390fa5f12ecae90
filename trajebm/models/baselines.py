"""The baselines: a feed-forward regression net and a probabilistic ensemble (PETS).

By default both predict the change from s_t (``residual``, the usual and stronger
parameterisation); ``residual=False`` is the paper's own baseline, which regressed the
absolute next state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from trajebm.engine.nets import MLP
from trajebm.models.base import ModelConfig, TrajectoryModel


@dataclass
class FCConfig(ModelConfig):
    """The feed-forward baseline, trained by MSE."""

    kind: str = field(default="fc", init=False)
    residual: bool = True
    """Predict s_{t+1} - s_t (False: the absolute next state, as the paper's baseline did)."""


@dataclass
class EnsembleConfig(ModelConfig):
    """The probabilistic ensemble, trained by Gaussian NLL on bootstrap resamples."""

    kind: str = field(default="ensemble", init=False)
    residual: bool = True
    """Model s_{t+1} - s_t (False: the absolute next state)."""
    members: int = 5
    """Ensemble members."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.members <= 0:
            raise ValueError(f"members must be positive, got {self.members}")


class FeedForward(TrajectoryModel):
    """s_{t+1} = s_t + f(context, a_t), or with ``residual=False`` s_{t+1} = f(context, a_t)."""

    deterministic = True

    def __init__(self, config: FCConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        c = config
        self.net = MLP(c.cond_dim, c.state_dim, c.hidden, c.layers, c.spectral_norm,
                       c.activation)

    def forward(self, cond: Tensor) -> Tensor:
        out = self.net(cond)
        return self.last_state(cond) + out if self.config.residual else out

    def loss(self, x: Tensor, cond: Tensor) -> Tensor:
        return (self(cond) - x).pow(2).mean()

    def propose(self, cond: Tensor, **_: Any) -> Tensor:
        with torch.no_grad():
            return self(cond)


class GaussianEnsemble(TrajectoryModel):
    """Members output a diagonal Gaussian over s_{t+1} - s_t (over s_{t+1} itself with
    ``residual=False``).

    Each rollout particle keeps one randomly drawn member for its whole rollout (TS-inf);
    ``temperature`` scales the variance.
    """

    def __init__(self, config: EnsembleConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        c = config
        self.members = nn.ModuleList(
            MLP(c.cond_dim, 2 * c.state_dim, c.hidden, c.layers, c.spectral_norm, c.activation)
            for _ in range(c.members))
        self.max_logvar = nn.Parameter(torch.full((c.state_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((c.state_dim,), -10.0))

    def _gaussian(self, member: nn.Module, cond: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = member(cond).chunk(2, dim=-1)
        if self.config.residual:
            mean = self.last_state(cond) + mean
        return mean, self._bound(logvar)

    def forward(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Means and log-variances, each (members, N, D)."""
        means, logvars = zip(*(self._gaussian(m, cond) for m in self.members), strict=True)
        return torch.stack(means), torch.stack(logvars)

    def _bound(self, logvar: Tensor) -> Tensor:
        """Soft-clamp log-variances between learned bounds, as in PETS."""
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - logvar)
        return self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)

    def loss(self, x: Tensor, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Gaussian NLL, each member on its own bootstrap resample of the batch (PETS)."""
        nll = x.new_zeros(())
        for member in self.members:
            idx = torch.randint(len(x), (len(x),), generator=generator).to(x.device)
            mean, logvar = self._gaussian(member, cond[idx])
            nll = nll + ((mean - x[idx]).pow(2) * torch.exp(-logvar) + logvar).mean()
        nll = nll / len(self.members)
        return nll + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum()) / len(self.max_logvar)

    def propose(self, cond: Tensor, *, temperature: float = 1.0, members: Tensor | None = None,
                **_: Any) -> Tensor:
        """A sample of each row's member (``members``, else one drawn per row); only the
        members picked are evaluated, each on its own rows."""
        with torch.no_grad():
            pick = (torch.randint(self.config.members, (len(cond),), device=cond.device)
                    if members is None else members.to(cond.device))
            mean = cond.new_empty(len(cond), self.config.state_dim)
            logvar = torch.empty_like(mean)
            for m in pick.unique().tolist():
                rows = pick == m
                mean[rows], logvar[rows] = self._gaussian(self.members[m], cond[rows])
            return mean + torch.exp(0.5 * logvar) * temperature**0.5 * torch.randn_like(mean)
