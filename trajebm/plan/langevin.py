"""The energy's own planner: joint Langevin over an action sequence and the states it leads to.

For an energy-based trajectory model the plan is a sample of

    E_plan(a, s) = Σ_t E_θ(s_{t-k+1..t}, a_t, s_{t+1}) + w · cost_task(s) + λ Σ_t |a_t − a_{t−1}|²

over the actions a_{0..H−1} (tanh-squashed, so they stay in [−1, 1]) and the predicted states
s_{1..H} (z units) jointly — the model's energy keeps the states physically plausible given the
actions, the task energy pulls them to the goal, and the smoothness prior keeps the actions
executable (Du, Lin & Mordatch 2019 sum window energies the same way). Chains are warm-started
from the last plan (shifted one step) with the states the model predicts for those actions,
run ``steps`` Langevin steps (:func:`trajebm.engine.sampling.langevin`). Then each chain's
actions are rolled out by the model itself and the chain whose rollout best meets the goal
gives the action to execute (``select="rollout"``; the chain of lowest E_plan with
``select="energy"``): the free states guide the search, but the decision — and the prediction
recorded — is what the model expects the actions to do, so a plan whose states satisfy the
goal only by departing from the model is not believed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from trajebm.engine.sampling import LangevinConfig, langevin
from trajebm.models import TrajectoryEBM
from trajebm.plan.dynamics import LearnedDynamics
from trajebm.plan.planners import ACTION_DIM, SamplingPlanner, Situation, squash, unsquash
from trajebm.plan.tasks import Task


def model_energy(model, x: Tensor, cond: Tensor) -> Tensor:
    """The model's energy of candidates ``x`` given ``cond``, differentiable in both (a
    proposal head's centre included, which the training forward detaches)."""
    if isinstance(model, TrajectoryEBM):
        return model(x, cond, center=model.center(cond))
    return model(x, cond)


class LangevinPlanner(SamplingPlanner):
    """Joint Langevin planning on an energy-based model (module docstring)."""

    name = "langevin"

    def __init__(self, dynamics: LearnedDynamics, task: Task, horizon: int = 7,
                 chains: int = 16, steps: int = 30, step_size: float = 0.05,
                 noise: float = 0.005, task_weight: float = 1.0, model_weight: float = 1.0,
                 smoothness: float = 0.1, spread: float = 0.3, select: str = "rollout",
                 seed: int = 0) -> None:
        super().__init__(dynamics, task, horizon, seed)
        model = dynamics.model
        if not model.energy_based:
            raise ValueError(f"Langevin planning needs an energy; the {model.kind} model has "
                             f"none (use shooting, mppi or cem)")
        if horizon % model.config.segment:
            raise ValueError(f"horizon {horizon} is not a multiple of the model's segment "
                             f"{model.config.segment}")
        self.model, self.chains, self.steps = model, chains, steps
        self.sampler = LangevinConfig(steps=steps, step_size=step_size, noise=noise,
                                      grad_clip=None, bounds=None)
        if select not in ("rollout", "energy"):
            raise ValueError(f"select must be 'rollout' or 'energy', not {select!r}")
        self.task_weight, self.model_weight = task_weight, model_weight
        self.smoothness, self.spread, self.select = smoothness, spread, select

    def energy(self, now: Situation, window: Tensor):
        """E_plan as a sampler's energy of flat plans (E * C, H * (A + D))."""
        model, h = self.model, self.horizon
        seg, k, d = model.config.segment, model.config.context, model.config.state_dim
        c = self.chains
        goal = torch.as_tensor(now.goal, dtype=torch.float32).repeat_interleave(c, 0)
        height = torch.as_tensor(now.start_height, dtype=torch.float32).repeat_interleave(c, 0)
        previous = torch.as_tensor(now.previous, dtype=torch.float32).repeat_interleave(c, 0)

        def energy(x: Tensor, _cond: Tensor | None) -> Tensor:
            u, s = x[:, : h * ACTION_DIM], x[:, h * ACTION_DIM :]
            actions, states = squash(u.view(-1, h, ACTION_DIM)), s.view(-1, h, d)
            total, win = 0.0, window
            for t in range(0, h, seg):
                cond = model.make_cond(win, actions[:, t : t + seg])
                total = total + model_energy(model, states[:, t : t + seg].flatten(1), cond)
                win = torch.cat([win, states[:, t : t + seg]], 1)[:, -k:]
            cost = self.task.cost(model.denormalize(states), goal, height)
            jumps = torch.diff(torch.cat([previous[:, None], actions], 1), dim=1)
            return (self.model_weight * total + self.task_weight * cost
                    + self.smoothness * jumps.pow(2).sum((1, 2)))

        return energy

    def starts(self, now: Situation, window: Tensor) -> Tensor:
        """Flat plans (E * C, H * (A + D)): the warm-started actions (jittered but for the
        first chain) and the model's prediction of their states."""
        c = self.chains
        u = unsquash(self.mean).repeat_interleave(c, 0)
        jitter = self.spread * torch.randn(u.shape, generator=self.generator)
        jitter[::c] = 0.0
        u = u + jitter
        with torch.no_grad():
            states = self.dynamics.predict(window, squash(u))[:, 0]
        z = self.model.normalize(states)
        return torch.cat([u.flatten(1), z.flatten(1)], 1)

    def act(self, now: Situation) -> np.ndarray:
        e, c, h = len(now.goal), self.chains, self.horizon
        window = self.dynamics.windows(now.history).repeat_interleave(c, 0)
        energy = self.energy(now, window)
        plans = langevin(energy, self.starts(now, window), None, self.sampler)
        actions = squash(plans[:, : h * ACTION_DIM].view(e * c, h, ACTION_DIM))
        if self.select == "rollout":
            cost, rollouts = self.costs(now, actions.view(e, c, h, ACTION_DIM))
            best = cost.argmin(1)
            states = rollouts[torch.arange(e), best].mean(1)
        else:
            with torch.no_grad():
                best = energy(plans, None).view(e, c).argmin(1)
            states = self.model.denormalize(plans[:, h * ACTION_DIM :].view(e, c, h, -1)
                                            [torch.arange(e), best])
        self.mean = actions.view(e, c, h, ACTION_DIM)[torch.arange(e), best]
        self.prediction = states.detach().numpy()
        action = self.mean[:, 0].numpy().astype(np.float64)
        self.shift()
        return action
