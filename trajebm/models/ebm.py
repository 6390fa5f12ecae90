"""The paper's trajectory EBM, trained by contrastive divergence (docs/paper.md §2).

``E(s_{t-k+1..t}, a_t, s_{t+1})``: an MLP on the concatenation of the condition (context and
actions) and the candidate next state — or, with ``segment`` H > 1, one energy over the whole
segment ``E(context, a_{t..t+H-1}, s_{t+1..t+H})`` sampled jointly. Proposals are short-run
Langevin chains from ``s_t + U(-a, a)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from trajebm.engine.nets import MLP
from trajebm.engine.sampling import LangevinConfig, langevin
from trajebm.engine.train.config import ContrastiveConfig
from trajebm.models.base import ModelConfig, TrajectoryModel

ZEnergy = Callable[[Tensor, "Tensor | None"], Tensor]
"""An energy on z-scored candidates ``(N, segment * D)`` and conditions, as the sampler sees."""


def paper_sampler() -> LangevinConfig:
    """docs/paper.md §2 chains: 20 steps, lambda = 1, sigma = 0.001, no clipping, no bounds."""
    return LangevinConfig(steps=20, step_size=1.0, noise=0.001, grad_clip=None, bounds=None)


def trajectory_contrastive() -> ContrastiveConfig:
    """The trajectory EBM's contrastive objective: every chain fresh (no replay), negatives
    conditioned as their chains were."""
    return ContrastiveConfig(replay_prob=0.0, negatives_cond="buffer")


@dataclass
class EBMConfig(ModelConfig):
    """A contrastive-divergence EBM: its energy net, its sampler and how it is trained."""

    kind: str = field(default="ebm", init=False)
    segment: int = 1
    """States predicted jointly by one energy (1: the next state)."""
    delta_input: bool = True
    """Feed the candidate as its change from the chain centre (False: the paper's plain input)."""
    init_noise: float = 0.3
    """Chains start at the centre plus U(-a, a), a = init_noise (z units)."""
    proposal: bool = False
    """A regression head mu(context, actions) centres the chains (trained by MSE beside CD)."""
    sampler: LangevinConfig = field(default_factory=paper_sampler)
    """The Langevin chain of training negatives and of rollouts."""
    contrastive: ContrastiveConfig = field(default_factory=trajectory_contrastive)
    """The contrastive objective: loss weights, replay buffer, collapse guard."""


class TrajectoryEBM(TrajectoryModel):
    """E(context, actions, next states) -> scalar: an MLP on the concatenation.

    With ``delta_input`` the candidate enters as its change from the chain centre: a linear
    change of inputs (same function class) that starts the network off comparing the candidate
    with the present. With ``proposal`` a regression head mu(context, actions) (trained by MSE
    beside the contrastive loss, as in cooperative learning) starts the chains at
    mu + U(-a, a), and the energy sees the candidate relative to mu: it judges corrections to a
    cheap guess rather than finding the next state from scratch.
    """

    energy_based = True

    def __init__(self, config: EBMConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        c = config
        self.net = MLP(c.cond_dim + c.out_dim, 1, c.hidden, c.layers, c.spectral_norm,
                       c.activation)
        self.proposal = (MLP(c.cond_dim, c.out_dim, c.hidden, c.layers, c.spectral_norm,
                             c.activation) if c.proposal else None)

    def center(self, cond: Tensor) -> Tensor:
        """Where chains start (before noise): s_t, or with a proposal head mu(cond)."""
        anchor = self.anchor(cond)
        return anchor if self.proposal is None else anchor + self.proposal(cond)

    def proposal_loss(self, x: Tensor, cond: Tensor) -> Tensor:
        """MSE of the proposal head on the true next states (the objective's ``aux_loss``)."""
        return (self.center(cond) - x).pow(2).mean()

    def forward(self, x: Tensor, cond: Tensor, center: Tensor | None = None) -> Tensor:
        """The energy of candidates ``x`` given ``cond``; ``center`` is :meth:`center` of
        ``cond`` when the caller already has it."""
        if self.config.delta_input:
            x = x - (self.center(cond).detach() if center is None else center)
        return self.net(torch.cat([cond, x], 1)).squeeze(-1)

    @torch.no_grad()
    def init_chains(self, cond: Tensor, generator: torch.Generator | None = None,
                    center: Tensor | None = None) -> Tensor:
        """Chain starts: :meth:`center` plus U(-a, a), a = init_noise. The uniforms come from
        ``generator`` on its own device (a replay buffer's CPU generator serves a model on any
        device)."""
        center = self.center(cond) if center is None else center
        where = center.device if generator is None else generator.device
        u = torch.rand(center.shape, generator=generator, device=where).to(center.device)
        return center + self.config.init_noise * (2.0 * u - 1.0)

    @torch.no_grad()
    def chain_energy(self, cond: Tensor, center: Tensor | None = None
                     ) -> tuple[ZEnergy, Tensor]:
        """The energy for chains whose condition stays ``cond``: ``(energy, h)`` with
        ``energy(x, h) == self(x, cond)``; the contrastive objective and :meth:`propose`
        sample with it.

        Everything that depends on ``cond`` alone is computed once here instead of at every
        Langevin step — the chains' centre and the condition's share of the first layer
        (:meth:`trajebm.engine.nets.MLP.partial`) — so a step multiplies only the candidate's
        columns. Exact in x, but the gradient does not reach the first layer's weights.
        """
        shift = None
        if self.config.delta_input:
            shift = self.center(cond) if center is None else center
        rest, hidden = self.net.partial(cond, shift)

        def energy(x: Tensor, h: Tensor | None) -> Tensor:
            return rest(x, h).squeeze(-1)

        return energy, hidden

    def propose(self, cond: Tensor, *, steps: int | None = None, temperature: float = 1.0,
                extra: ZEnergy | None = None, members: Tensor | None = None,
                compile: bool | str = False) -> Tensor:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                center = self.center(cond)
            own, hidden = self.chain_energy(cond, center)
            energy = own if extra is None else (own, lambda x, _h: extra(x, cond))
            cfg = self.config.sampler
            return langevin(energy, self.init_chains(cond, center=center), hidden, cfg,
                            steps=cfg.steps if steps is None else steps, temperature=temperature,
                            compile=compile or cfg.compile)
        finally:
            self.train(was_training)
