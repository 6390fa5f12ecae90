"""A conditional flow-matching model of the next state(s) (Lipman et al. 2023; Liu et al. 2023).

A velocity net ``v(x_t, t, cond)`` is trained on the straight path from noise to data:
``x_t = (1 - t) x_0 + t x_1`` with ``x_0 ~ N(0, I)`` and ``t ~ U(0, 1)``, target velocity
``x_1 - x_0`` (rectified flow, linear-path CFM). ``x_1`` is the next ``segment`` states in z units,
by default as their change from s_t. Proposals integrate ``dx/dt = v`` from ``t = 0`` to 1 in
``ode_steps`` Euler or midpoint steps. It is a sampler of the next state without an energy:
multimodal like the EBMs, but not steerable by added energies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from trajebm.engine.errors import UsageError
from trajebm.engine.nets import MLP
from trajebm.models.base import ModelConfig, TrajectoryModel

INTEGRATORS = ("euler", "midpoint")
"""ODE integrators of the sampler: one velocity per step, or two (second order)."""


@dataclass
class FlowConfig(ModelConfig):
    """A conditional flow-matching model: its velocity net and its ODE sampler."""

    kind: str = field(default="flow", init=False)
    activation: str = "silu"
    """Hidden activation: lrelu (leaky ReLU 0.2) or silu (a smooth velocity field)."""
    segment: int = 1
    """States predicted jointly by one flow (1: the next state)."""
    residual: bool = True
    """Flow to s_{t+1} - s_t (False: to the absolute next state)."""
    time_features: int = 4
    """Sine/cosine pairs of the time embedding (frequencies pi * 2^j, j < time_features)."""
    ode_steps: int = 20
    """Integration steps from noise (t = 0) to a sample (t = 1)."""
    integrator: str = "midpoint"
    """euler (one velocity per step) or midpoint (two: second order)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.time_features < 0 or self.ode_steps < 1:
            raise ValueError("need time_features >= 0 and ode_steps >= 1")
        if self.integrator not in INTEGRATORS:
            raise ValueError(f"integrator must be one of {', '.join(INTEGRATORS)}")


def time_embedding(t: Tensor, pairs: int) -> Tensor:
    """``(N, 1 + 2 * pairs)``: t itself, then sin and cos of pi * 2^j * t for j < pairs."""
    freqs = math.pi * 2.0 ** torch.arange(pairs, dtype=t.dtype, device=t.device)
    angles = t[:, None] * freqs
    return torch.cat([t[:, None], angles.sin(), angles.cos()], 1)


class FlowMatching(TrajectoryModel):
    """v(x_t, t, context, actions): a velocity MLP on the concatenation (module docstring)."""

    def __init__(self, config: FlowConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        c = config
        self.net = MLP(c.cond_dim + c.out_dim + 1 + 2 * c.time_features, c.out_dim, c.hidden,
                       c.layers, c.spectral_norm, c.activation)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """The velocity at points ``x`` (N, segment * D) of the flow and times ``t`` (N,)."""
        emb = time_embedding(t, self.config.time_features)
        return self.net(torch.cat([cond, x, emb], 1))

    def target(self, x: Tensor, cond: Tensor) -> Tensor:
        """Where the flow ends for true next states ``x``: their change from s_t, or x itself."""
        return x - self.anchor(cond) if self.config.residual else x

    def loss(self, x: Tensor, cond: Tensor) -> Tensor:
        """Linear-path conditional flow matching: ||v(x_t, t, cond) - (x_1 - x_0)||^2."""
        x1 = self.target(x, cond)
        x0 = torch.randn_like(x1)
        t = torch.rand(len(x1), device=x1.device)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        return (self(xt, t, cond) - (x1 - x0)).pow(2).mean()

    @torch.no_grad()
    def integrate(self, x: Tensor, cond: Tensor, steps: int) -> Tensor:
        """Carry ``x`` (the flow at t = 0) to t = 1 along dx/dt = v in ``steps`` equal steps."""
        h = 1.0 / steps
        for i in range(steps):
            t = x.new_full((len(x),), i * h)
            v = self(x, t, cond)
            if self.config.integrator == "midpoint":
                v = self(x + 0.5 * h * v, t + 0.5 * h, cond)
            x = x + h * v
        return x

    def propose(self, cond: Tensor, *, steps: int | None = None, temperature: float = 1.0,
                **_: Any) -> Tensor:
        """Integrate from N(0, temperature * I) with ``steps`` steps (default ``ode_steps``)."""
        steps = self.config.ode_steps if steps is None else steps
        if steps < 1:
            raise UsageError(f"a flow samples in >= 1 integration steps, not {steps}")
        was_training = self.training
        self.eval()
        try:
            noise = torch.randn(len(cond), self.config.out_dim, device=cond.device)
            x0 = temperature**0.5 * noise
            x1 = self.integrate(x0, cond, steps)
            return self.anchor(cond) + x1 if self.config.residual else x1
        finally:
            self.train(was_training)
