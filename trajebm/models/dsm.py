"""A noise-conditioned trajectory EBM trained by denoising score matching (Song & Ermon 2019).

``E(x, sigma) = E_theta(cond, x, log sigma) / sigma``: its gradient predicts the noise added to
a true next state, at noise levels from ``sigma_min`` to ``sigma_max``. Sampled by annealed
Langevin from ``s_t + N(0, sigma_max^2)`` over ``noise_levels`` geometric levels, then one
denoising step; more steps per level only bring the chain closer to the model's distribution,
so it is no short-run sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trajebm.engine.nets import MLP
from trajebm.engine.sampling import EnergyFn, annealed_langevin
from trajebm.models.base import ModelConfig, TrajectoryModel


@dataclass
class DSMConfig(ModelConfig):
    """A denoising-score-matching EBM: its energy net and its noise levels."""

    kind: str = field(default="dsm", init=False)
    activation: str = "silu"
    """Hidden activation: lrelu (leaky ReLU 0.2) or silu (smooth scores)."""
    segment: int = 1
    """States predicted jointly by one energy (1: the next state)."""
    delta_input: bool = True
    """Feed the candidate as its change from s_t."""
    sigma_max: float = 0.5
    """Largest noise level (z units): training noise and where sampling starts."""
    sigma_min: float = 0.01
    """Smallest noise level."""
    noise_levels: int = 10
    """Geometric levels of annealed sampling."""
    level_steps: int = 2
    """Langevin steps per level."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.sigma_min < self.sigma_max or self.noise_levels < 1 \
                or self.level_steps < 0:
            raise ValueError("need 0 < sigma_min < sigma_max, noise_levels >= 1, "
                             "level_steps >= 0")


class DenoisingEBM(TrajectoryModel):
    """E(context, actions, next states, sigma): a noise-conditioned energy (module docstring)."""

    energy_based = True

    def __init__(self, config: DSMConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        c = config
        self.net = MLP(c.cond_dim + c.out_dim + 1, 1, c.hidden, c.layers, c.spectral_norm,
                       c.activation)

    def forward(self, x: Tensor, cond: Tensor, sigma: Tensor | float | None = None) -> Tensor:
        """The energy at noise level ``sigma`` (default ``sigma_min``)."""
        if self.config.delta_input:
            x = x - self.anchor(cond).detach()
        sigma = torch.as_tensor(self.config.sigma_min if sigma is None else sigma,
                                dtype=x.dtype, device=x.device).expand(len(x))
        return self.net(torch.cat([cond, x, sigma.log()[:, None]], 1)).squeeze(-1) / sigma

    def levels(self) -> list[float]:
        """The noise levels of annealed sampling, largest first."""
        c = self.config
        return np.geomspace(c.sigma_max, c.sigma_min, c.noise_levels).tolist()

    def loss(self, x: Tensor, cond: Tensor) -> Tensor:
        """Denoising score matching at a log-uniform noise level per row (sigma^2-weighted)."""
        c = self.config
        u = torch.rand(len(x), device=x.device)
        sigma = (math.log(c.sigma_min) + u * math.log(c.sigma_max / c.sigma_min)).exp()
        eps = torch.randn_like(x)
        noisy = (x + sigma[:, None] * eps).requires_grad_(True)
        energy = self(noisy, cond, sigma) * sigma
        (grad,) = torch.autograd.grad(energy.sum(), noisy, create_graph=True)
        return (grad - eps).pow(2).mean()

    def at_level(self, sigma: float) -> EnergyFn:
        """The energy at noise level ``sigma`` as a sampler's energy ``E(x, cond)``."""
        return lambda x, cond: self(x, cond, sigma)

    def propose(self, cond: Tensor, *, steps: int | None = None, temperature: float = 1.0,
                extra: EnergyFn | None = None, **_: Any) -> Tensor:
        """Annealed Langevin with ``steps`` per level (default ``level_steps``)."""
        was_training = self.training
        self.eval()
        try:
            anchor = self.anchor(cond)
            x = anchor + self.config.sigma_max * torch.randn_like(anchor)
            per_level = self.config.level_steps if steps is None else steps
            return annealed_langevin(self.at_level, x, cond, self.levels(), per_level,
                                     temperature=temperature, extra=extra)
        finally:
            self.train(was_training)
