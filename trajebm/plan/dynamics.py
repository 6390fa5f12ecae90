"""What a planner predicts with: a learned trajectory model or the true simulator.

Both answer the same question — the states (original units) that candidate action sequences
lead to from each episode's present — so every sampling planner works with either:

* :class:`LearnedDynamics` rolls a trajectory model out (:func:`trajebm.rollout.rollout_z`)
  from the last k states, ``particles`` times per candidate: an ensemble's particle p keeps
  member p mod M for the whole horizon (TS∞; as many particles as members rank a candidate by
  its mean over the ensemble), an EBM draws independent samples, a deterministic model one.
  It also rolls out differentiably (:meth:`LearnedDynamics.differentiable`), for gradient
  shooting through a regression model.
* :class:`SimulatorDynamics` simulates the candidates in MuJoCo from the episodes' physics
  states (``mujoco.rollout``): the oracle.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from trajebm.models import FeedForward, GaussianEnsemble, TrajectoryModel
from trajebm.rollout import rollout_z


class LearnedDynamics:
    """A trajectory model as the planners see it (module docstring)."""

    def __init__(self, model: TrajectoryModel, particles: int = 1) -> None:
        if not model.config.conditional:
            raise ValueError(f"the {model.kind} model is unconditional: it cannot tell what "
                             f"actions do, so it cannot plan")
        self.model = model.eval()
        self.particles = 1 if model.deterministic else particles
        self.context = model.config.context

    def windows(self, history: np.ndarray) -> Tensor:
        """The last k states of each episode's history (E, t+1, D), the first state repeated
        before the episode began, z-scored: (E, k, D)."""
        k = self.context
        if history.shape[1] < k:
            pad = np.repeat(history[:, :1], k - history.shape[1], 1)
            history = np.concatenate([pad, history], 1)
        window = torch.as_tensor(history[:, -k:], dtype=torch.float32)
        return self.model.normalize(window)

    def members(self, rows: int) -> Tensor | None:
        """The ensemble member of each particle row (rows ordered candidate-major)."""
        if not isinstance(self.model, GaussianEnsemble):
            return None
        m = self.model.config.members
        return torch.arange(rows) % self.particles % m

    @torch.no_grad()
    def predict(self, window: Tensor, actions: np.ndarray | Tensor) -> Tensor:
        """States (N, P, H, D) in original units for candidates (N, H, A) whose episode
        windows are ``window`` (N, k, D; z units)."""
        acts = torch.as_tensor(actions, dtype=torch.float32)
        n, h = acts.shape[:2]
        p = self.particles
        win = window.repeat_interleave(p, 0)
        pred = rollout_z(self.model, win, acts.repeat_interleave(p, 0), h,
                         members=self.members(n * p))
        return self.model.denormalize(pred).view(n, p, h, -1)

    def differentiable(self, window: Tensor, actions: Tensor) -> Tensor:
        """States (N, P, H, D) of a regression model's mean predictions, differentiable in
        ``actions`` (N, H, A): fc's predictions, or each particle's ensemble member's mean."""
        model = self.model
        if not isinstance(model, FeedForward | GaussianEnsemble):
            raise ValueError(f"gradient shooting needs a regression model, not {model.kind}")
        n, h = actions.shape[:2]
        p = self.particles
        win = window.repeat_interleave(p, 0)
        acts = actions.repeat_interleave(p, 0)
        members = self.members(n * p)
        out = []
        for t in range(h):
            cond = model.make_cond(win, acts[:, t])
            if members is None:
                nxt = model(cond)
            else:
                means, _ = model(cond)
                nxt = means[members, torch.arange(len(cond))]
            out.append(nxt)
            win = torch.cat([win[:, 1:], nxt[:, None]], 1)
        return model.denormalize(torch.stack(out, 1)).view(n, p, h, -1)


class SimulatorDynamics:
    """The true simulator (``trajebm.envs.Simulator``) as the planners see it: the oracle."""

    particles = 1

    def __init__(self, simulator) -> None:
        self.simulator = simulator

    def predict(self, physics: tuple[np.ndarray, np.ndarray], actions: np.ndarray) -> Tensor:
        """States (N, 1, H, D) of candidates (N, H, A) from their episodes' (full physics
        states, warm-starts), each (N, ...)."""
        full, warmstart = physics
        states = self.simulator.rollout(full, warmstart, np.asarray(actions, dtype=np.float64))
        return torch.as_tensor(states[:, None, 1:], dtype=torch.float32)
