"""What a training step minimises, behind one interface: :class:`Contrastive` (an EBM against
its own Langevin samples) and :class:`Supervised` (any loss of a baseline).

The trainer hands an objective each batch and the module to run the loss forward through
(:attr:`Objective.module`, wrapped in DistributedDataParallel under ``torchrun``, so gradients
are averaged across ranks), and gets back the loss, the values to log and how large the step's
energies were; before each step it tells the objective the step's index and the run's length
(:meth:`Objective.at_step`, for schedules: they resume and roll back with the trainer's step).
The objective owns whatever state it needs beyond the model — the contrastive objective's
replay buffer and collapse guard — and saves it in the trainer's checkpoint.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trajebm.engine.buffer import NoiseInit, ReplayBuffer
from trajebm.engine.sampling import LangevinConfig, langevin
from trajebm.engine.train.config import ContrastiveConfig

LossFn = Callable[[Tensor, "Tensor | None"], Tensor]
"""A supervised objective ``loss_fn(x, cond) -> scalar`` (uses the global torch RNG if any)."""


@dataclass
class StepResult:
    """One step's loss (to minimise), its logged values (``lr`` left for the trainer to fill in
    after the update), the largest |energy| or |loss|, and why not to apply it (or None)."""

    loss: Tensor
    row: dict[str, float]
    magnitude: float
    reason: str | None = None


class Objective:
    """The interface; the base class is the stateless part every objective shares."""

    module: nn.Module
    """The module whose forward gives the loss's terms (what DDP wraps)."""
    adam_clip: bool = False
    """Whether the paper's clip to Adam's bound applies unless the TrainConfig says otherwise."""

    def step(self, net: nn.Module, x: Tensor, cond: Tensor | None) -> StepResult:
        """The loss of a batch, its forward run through ``net`` (:attr:`module`, maybe DDP)."""
        raise NotImplementedError

    def at_step(self, step: int, total: int) -> None:
        """Called before each step with its index (0-based) and the run's number of steps."""

    def commit(self) -> None:
        """Called after the step's update was applied."""

    def attach(self, device: torch.device) -> None:
        """Move the objective's state to the training device."""

    def detach(self) -> None:
        """Move it back where it was made (training is over)."""

    def reseed(self, seed: int) -> None:
        """Reseed the objective's own generator (start, rollback)."""

    def reset_guards(self) -> None:
        """Forget the guards' history (after a rollback)."""

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the trainer's checkpoint holds its keys)."""


class _Loss(nn.Module):
    """``loss_fn`` as a module over ``model``'s parameters, so DDP sees the loss's forward."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        return self.loss_fn(x, cond)


class Supervised(Objective):
    """Minimise ``loss_fn(x, cond)`` (a regression or likelihood baseline, a classifier)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        self.loss_fn = loss_fn  # late-bound below, so a replaced loss_fn takes effect
        self.module = _Loss(model, lambda x, cond: self.loss_fn(x, cond))

    def step(self, net: nn.Module, x: Tensor, cond: Tensor | None) -> StepResult:
        loss = net(x, cond)
        value = loss.detach().item()
        return StepResult(loss, {"loss": value, "lr": math.nan}, abs(value))


def cd_loss(e_pos: Tensor, e_neg: Tensor, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """Contrastive divergence with the L2 energy penalty; returns (loss, penalty)."""
    penalty = e_pos.pow(2).mean() + e_neg.pow(2).mean()
    return e_pos.mean() - e_neg.mean() + alpha * penalty, penalty


class _EnergiesAndAux(nn.Module):
    """The EBM's energies and an auxiliary loss on the positives in one forward (seen by DDP)."""

    def __init__(self, model: nn.Module, aux_loss: LossFn) -> None:
        super().__init__()
        self.model, self.aux_loss = model, aux_loss

    def forward(self, x: Tensor, cond: Tensor | None, positives: int) -> tuple[Tensor, Tensor]:
        pos_cond = None if cond is None else cond[:positives]
        return self.model(x, cond), self.aux_loss(x[:positives], pos_cond)


class Contrastive(Objective):
    """Contrastive divergence of an energy ``model(x, cond) -> (B,)`` against Langevin samples.

    Chains start from the replay buffer (or its init) and run ``sampler`` on the model in eval
    mode (no dropout, no spectral-norm power iteration: every chain samples one fixed energy);
    the loss forward over ``[x+, x-]`` runs in train mode. A model with
    ``chain_energy(cond) -> (energy, h)`` (its per-condition work done once per chain) is
    sampled through it, except when the KL term needs the last step's graph to reach every
    weight. ``aux_loss(x+, cond)`` adds a supervised term on the positives (e.g. a learned
    chain initialiser inside the model). A step whose mean ``E(x-) - E(x+)`` over the last
    ``collapse_window`` steps exceeds ``collapse_gap`` is refused (data and samples separated
    outright: the chains no longer reach the data).
    """

    adam_clip = True

    def __init__(self, model: nn.Module, sampler: LangevinConfig, buffer: ReplayBuffer,
                 config: ContrastiveConfig | None = None, aux_loss: LossFn | None = None
                 ) -> None:
        self.model, self.sampler, self.buffer = model, sampler, buffer
        self.config = config or ContrastiveConfig()
        self.aux_loss = aux_loss
        self.module = model if aux_loss is None else _EnergiesAndAux(model, aux_loss)
        self.gaps: deque[float] = deque(maxlen=self.config.collapse_window)
        self._home = buffer.device
        self._pending: tuple[Tensor, Tensor | None] | None = None
        self._step, self._steps = 0, 1

    @classmethod
    def build(cls, model: nn.Module, sampler: LangevinConfig, config: ContrastiveConfig,
              sample_shape: tuple[int, ...], init: NoiseInit, *,
              cond_shape: tuple[int, ...] | None = None, cond_dtype: torch.dtype = torch.float32,
              dtype: torch.dtype = torch.float32, aux_loss: LossFn | None = None,
              seed: int = 0) -> Contrastive:
        """The objective with a replay buffer sized by ``config`` (samples of
        ``sample_shape`` stored as ``dtype``, conditions of ``cond_shape`` when conditional)."""
        buffer = ReplayBuffer(config.buffer_size, sample_shape, init, cond_shape=cond_shape,
                              cond_dtype=cond_dtype, dtype=dtype,
                              replay_prob=config.replay_prob, seed=seed)
        return cls(model, sampler, buffer, config, aux_loss)

    def _chains(self, x: Tensor, cond: Tensor | None, kl: bool) -> Tensor:
        """The negatives: Langevin from ``x`` on the model (in eval mode)."""
        chain_energy = getattr(self.model, "chain_energy", None)
        if chain_energy is None or kl or cond is None:
            return langevin(self.model, x, cond, self.sampler, keep_last_graph=kl)
        energy, hidden = chain_energy(cond)
        return langevin(energy, x, hidden, self.sampler)

    def _collapse(self, e_pos: float, e_neg: float) -> str | None:
        """Why the model counts as collapsed (mean e_neg - e_pos over the window), or None."""
        cfg = self.config
        self.gaps.append(e_neg - e_pos)
        if cfg.collapse_gap is None or len(self.gaps) < cfg.collapse_window:
            return None
        gap = sum(self.gaps) / len(self.gaps)
        if gap <= cfg.collapse_gap:
            return None
        return (f"collapse: mean E(x-) - E(x+) over the last {cfg.collapse_window} steps is "
                f"{gap:.3f} > collapse_gap {cfg.collapse_gap:g} (the model separates data "
                f"from its samples; chains no longer reach the data)")

    def at_step(self, step: int, total: int) -> None:
        self._step, self._steps = step, total

    @property
    def alpha(self) -> float:
        """The current step's penalty weight: ``alpha``, or with ``alpha_end``
        ``alpha^(1-t) alpha_end^t`` for t = step / (steps - 1) (exact at both ends; t = 0 in a
        one-step run)."""
        cfg = self.config
        if cfg.alpha_end is None:
            return cfg.alpha
        t = self._step / max(self._steps - 1, 1)
        return cfg.alpha ** (1 - t) * cfg.alpha_end**t

    def step(self, net: nn.Module, x: Tensor, cond: Tensor | None) -> StepResult:
        cfg, device, alpha = self.config, x.device, self.alpha
        start = self.buffer.sample(len(x), cond)
        c_neg = cond if cfg.negatives_cond == "data" or start.cond is None else start.cond
        c_neg = None if c_neg is None else c_neg.to(device)
        kl = cfg.kl_weight > 0
        self.model.eval()
        try:
            x_neg = self._chains(start.x.to(device), c_neg, kl)
        finally:
            self.model.train()
        both_cond = None if cond is None else torch.cat([cond, c_neg])
        x_all = torch.cat([x, x_neg.detach()])
        aux = torch.zeros((), device=device)
        if self.aux_loss is None:
            energies = net(x_all, both_cond)
        else:
            energies, aux = net(x_all, both_cond, len(x))
        e_pos, e_neg = energies[: len(x)], energies[len(x):]
        loss, penalty = cd_loss(e_pos, e_neg, alpha)
        loss = loss + aux
        kl_term = torch.zeros((), device=device)
        if kl:
            frozen = {k: v.detach() for k, v in self.model.named_parameters()}
            kl_term = torch.func.functional_call(self.model, frozen, (x_neg, c_neg)).mean()
            loss = loss + cfg.kl_weight * kl_term
        stats = torch.stack([loss.detach(), e_pos.detach().mean(), e_neg.detach().mean(),
                             penalty.detach(), kl_term.detach(), aux.detach(),
                             energies.detach().abs().max()]).tolist()
        reason = self._collapse(stats[1], stats[2])
        self._pending = (x_neg.detach(), c_neg)
        row = {"loss": stats[0], "e_pos": stats[1], "e_neg": stats[2], "l2": stats[3],
               "kl": stats[4], "lr": math.nan, "replayed": float(start.replayed.float().mean())}
        if self.aux_loss is not None:
            row["aux"] = stats[5]
        if cfg.alpha_end is not None:
            row["alpha"] = alpha
        return StepResult(loss, row, stats[6], reason)

    def commit(self) -> None:
        """Push the step's negatives into the replay buffer."""
        self.buffer.push(*self._pending)
        self._pending = None

    def attach(self, device: torch.device) -> None:
        self.buffer.to(device)  # no host round trip per step

    def detach(self) -> None:
        self.buffer.to(self._home)

    def reseed(self, seed: int) -> None:
        self.buffer.generator.manual_seed(seed)

    def reset_guards(self) -> None:
        self.gaps.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "collapse_gaps": list(self.gaps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.gaps.clear()
        self.gaps.extend(state.get("collapse_gaps", []))
