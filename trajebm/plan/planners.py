"""Planners over any dynamics, one interface: choose the next action of every episode.

Each control step a planner sees a :class:`Situation` — the episodes' histories, goals and
start heights, the step, the last executed actions (and, for the oracle, the physics states) —
and returns one action per episode, keeping its plan to warm-start the next step (receding
horizon; every episode is planned in one batch). ``prediction`` holds the states the chosen
plan expects (E, H, D), original units.

* :class:`MPPI` — PDDM's: filtered action noise a_t = β(μ_t + ε_t) + (1 − β) a_{t−1},
  reward-weighted mean with weights exp(−κ (cost − min cost)), replanned every step.
* :class:`CEM` — PETS's cross-entropy method: a population, its elite fraction, a few
  iterations, smoothed updates of a diagonal Gaussian over action sequences.
* :class:`Shooting` — gradient descent on the actions through a regression model's
  predictions (Adam on tanh-squashed actions).
* :class:`LangevinPlanner` — the energy's own (in ``trajebm.plan.langevin``).
* :class:`RandomActions` — uniform random actions: the lower bound.
* :class:`Replanning` — any of them replanning only every k steps (an ablation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trajebm.plan.tasks import Task

ACTION_DIM = 20


@dataclass
class Situation:
    """What a planner knows at a control step, for E episodes at once."""

    history: np.ndarray
    """States so far (E, t+1, D), original units."""
    goal: np.ndarray
    """Each episode's goal (E, G)."""
    start_height: np.ndarray
    """The object's height at each episode's start (E,)."""
    step: int
    """The control step about to be taken (0-based)."""
    previous: np.ndarray
    """The last executed action of each episode (E, A); zeros before the first."""
    physics: tuple[np.ndarray, np.ndarray] | None = None
    """(full physics states, warm-starts) of the episodes: the oracle's starting point."""


class Planner:
    """The interface (module docstring)."""

    name = ""
    horizon = 1
    prediction: np.ndarray | None = None

    def reset(self, episodes: int) -> None:
        """Forget every plan: ``episodes`` new episodes begin."""

    def act(self, now: Situation) -> np.ndarray:
        """The next action of every episode (E, A) in [-1, 1]."""
        raise NotImplementedError


class RandomActions(Planner):
    """Uniform random actions (no model): the lower bound."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, now: Situation) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, (len(now.goal), ACTION_DIM))


class SamplingPlanner(Planner):
    """What MPPI and CEM share: a dynamics, a task, a warm-started mean plan, candidate costs."""

    def __init__(self, dynamics, task: Task, horizon: int, seed: int = 0) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.dynamics, self.task, self.horizon = dynamics, task, horizon
        self.generator = torch.Generator().manual_seed(seed)
        self.mean: Tensor | None = None

    def reset(self, episodes: int) -> None:
        self.mean = torch.zeros(episodes, self.horizon, ACTION_DIM)

    def costs(self, now: Situation, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """Each candidate's cost (E, N) — the mean over its particles — and its predicted
        states (E, N, P, H, D); candidates (E, N, H, A)."""
        e, n = candidates.shape[:2]
        flat = candidates.reshape(e * n, self.horizon, ACTION_DIM)
        if now.physics is not None:
            physics = tuple(np.repeat(part, n, 0) for part in now.physics)
            states = self.dynamics.predict(physics, flat.numpy())
        else:
            window = self.dynamics.windows(now.history).repeat_interleave(n, 0)
            states = self.dynamics.predict(window, flat)
        p = states.shape[1]
        goal = torch.as_tensor(now.goal, dtype=torch.float32).repeat_interleave(n * p, 0)
        height = torch.as_tensor(now.start_height, dtype=torch.float32)
        height = height.repeat_interleave(n * p, 0)
        cost = self.task.cost(states.reshape(e * n * p, self.horizon, -1), goal, height)
        return cost.view(e, n, p).mean(2), states.view(e, n, p, self.horizon, -1)

    def shift(self) -> None:
        """Warm start: the plan moves one step on, its last action repeated."""
        self.mean = torch.cat([self.mean[:, 1:], self.mean[:, -1:]], 1)

    def finish(self, now: Situation) -> np.ndarray:
        """Execute the mean plan's first action; remember what it predicts; warm-start."""
        _, states = self.costs(now, self.mean[:, None])
        self.prediction = states[:, 0].mean(1).numpy()
        action = self.mean[:, 0].clamp(-1.0, 1.0).numpy().astype(np.float64)
        self.shift()
        return action


class MPPI(SamplingPlanner):
    """PDDM's filtered MPPI (module docstring); ``iterations`` refinements per step."""

    name = "mppi"

    def __init__(self, dynamics, task: Task, horizon: int = 7, candidates: int = 700,
                 beta: float = 0.7, kappa: float = 50.0, sigma: float = 0.9,
                 iterations: int = 1, seed: int = 0) -> None:
        super().__init__(dynamics, task, horizon, seed)
        if candidates < 1 or iterations < 1 or not 0 < beta <= 1:
            raise ValueError("need candidates, iterations >= 1 and 0 < beta <= 1")
        self.candidates, self.beta, self.kappa = candidates, beta, kappa
        self.sigma, self.iterations = sigma, iterations

    def sample(self, previous: np.ndarray) -> Tensor:
        """Filtered noisy candidates (E, N, H, A) around the mean plan, clipped to [-1, 1]."""
        e, n = self.mean.shape[0], self.candidates
        eps = self.sigma * torch.randn(e, n, self.horizon, ACTION_DIM, generator=self.generator)
        proposed = self.mean[:, None] + eps
        last = torch.as_tensor(previous, dtype=torch.float32)[:, None].expand(e, n, -1)
        steps = []
        for t in range(self.horizon):
            last = self.beta * proposed[:, :, t] + (1.0 - self.beta) * last
            steps.append(last)
        return torch.stack(steps, 2).clamp(-1.0, 1.0)

    def act(self, now: Situation) -> np.ndarray:
        for _ in range(self.iterations):
            candidates = self.sample(now.previous)
            cost, _ = self.costs(now, candidates)
            weights = torch.softmax(-self.kappa * cost, dim=1)
            self.mean = (weights[..., None, None] * candidates).sum(1)
        return self.finish(now)


class CEM(SamplingPlanner):
    """PETS's cross-entropy method (module docstring)."""

    name = "cem"

    def __init__(self, dynamics, task: Task, horizon: int = 15, population: int = 400,
                 elites: float = 0.1, iterations: int = 5, alpha: float = 0.1,
                 sigma: float = 0.5, seed: int = 0) -> None:
        super().__init__(dynamics, task, horizon, seed)
        if population < 2 or iterations < 1 or not 0 < elites <= 1:
            raise ValueError("need population >= 2, iterations >= 1, 0 < elites <= 1")
        self.population, self.iterations, self.alpha, self.sigma = (population, iterations,
                                                                    alpha, sigma)
        self.elites = max(1, int(round(elites * population)))

    def act(self, now: Situation) -> np.ndarray:
        e = self.mean.shape[0]
        std = torch.full_like(self.mean, self.sigma)
        for _ in range(self.iterations):
            noise = torch.randn(e, self.population, self.horizon, ACTION_DIM,
                                generator=self.generator)
            candidates = (self.mean[:, None] + std[:, None] * noise).clamp(-1.0, 1.0)
            cost, _ = self.costs(now, candidates)
            best = cost.topk(self.elites, dim=1, largest=False).indices
            elite = torch.gather(candidates, 1, best[..., None, None].expand(
                -1, -1, self.horizon, ACTION_DIM))
            self.mean = self.alpha * self.mean + (1 - self.alpha) * elite.mean(1)
            std = self.alpha * std + (1 - self.alpha) * elite.std(1, unbiased=False)
        return self.finish(now)


def squash(u: Tensor) -> Tensor:
    """Unbounded plan variables to actions in (-1, 1)."""
    return torch.tanh(u)


def unsquash(actions: Tensor) -> Tensor:
    """Actions to plan variables (inverse of :func:`squash`, clipped off the bounds)."""
    return torch.atanh(actions.clamp(-0.999, 0.999))


class Shooting(SamplingPlanner):
    """Gradient shooting through a regression model: Adam on tanh-squashed action sequences
    minimising the task cost of the model's mean predictions, plus ``smoothness`` times the
    squared change between consecutive actions; ``restarts`` plans per episode, the best
    kept."""

    name = "shooting"

    def __init__(self, dynamics, task: Task, horizon: int = 7, iterations: int = 20,
                 lr: float = 0.1, smoothness: float = 0.1, restarts: int = 4,
                 seed: int = 0) -> None:
        super().__init__(dynamics, task, horizon, seed)
        self.iterations, self.lr, self.smoothness, self.restarts = (iterations, lr,
                                                                    smoothness, restarts)

    def objective(self, now: Situation, window: Tensor, u: Tensor) -> Tensor:
        """Each plan's cost (E * R,) for plan variables u (E * R, H, A)."""
        actions = squash(u)
        states = self.dynamics.differentiable(window, actions)
        p = states.shape[1]
        r = len(u) // len(now.goal)
        goal = torch.as_tensor(now.goal, dtype=torch.float32).repeat_interleave(r * p, 0)
        height = torch.as_tensor(now.start_height, dtype=torch.float32)
        cost = self.task.cost(states.flatten(0, 1), goal, height.repeat_interleave(r * p, 0))
        previous = torch.as_tensor(now.previous, dtype=torch.float32).repeat_interleave(r, 0)
        steps = torch.diff(torch.cat([previous[:, None], actions], 1), dim=1)
        return cost.view(-1, p).mean(1) + self.smoothness * steps.pow(2).sum((1, 2))

    def act(self, now: Situation) -> np.ndarray:
        e, r = len(now.goal), self.restarts
        start = unsquash(self.mean).repeat_interleave(r, 0)
        jitter = torch.randn(start.shape, generator=self.generator) * 0.3
        jitter[::r] = 0.0  # the warm start itself is one of the restarts
        u = (start + jitter).requires_grad_(True)
        window = self.dynamics.windows(now.history).repeat_interleave(r, 0)
        optimizer = torch.optim.Adam([u], lr=self.lr)
        for _ in range(self.iterations):
            optimizer.zero_grad()
            self.objective(now, window, u).sum().backward()
            optimizer.step()
        with torch.no_grad():
            final = self.objective(now, window, u).view(e, r)
            best = final.argmin(1) + torch.arange(e) * r
            self.mean = squash(u.detach()[best])
        return self.finish(now)


class Replanning(Planner):
    """A planner that replans every ``every`` control steps and executes its last plan in
    between (PDDM and PETS replan every step; fewer replans cost less and react later)."""

    def __init__(self, inner: SamplingPlanner, every: int) -> None:
        if not 1 <= every <= inner.horizon:
            raise ValueError(f"replanning every {every} steps needs 1 <= every <= horizon "
                             f"({inner.horizon})")
        self.inner, self.every = inner, every
        self.name, self.horizon = inner.name, inner.horizon

    def reset(self, episodes: int) -> None:
        self.inner.reset(episodes)

    def act(self, now: Situation) -> np.ndarray:
        if now.step % self.every == 0:
            action = self.inner.act(now)
            self.prediction = self.inner.prediction
            return action
        # the plan's next step (the inner planner shifted its plan after acting)
        action = self.inner.mean[:, 0].clamp(-1.0, 1.0).numpy().astype(np.float64)
        self.inner.shift()
        # what the plan expects from here on; past its end, its last state
        self.prediction = np.concatenate([self.prediction[:, 1:], self.prediction[:, -1:]], 1)
        return action


def budget_of(planner: Planner) -> int:
    """The planner's budget per control step, for figures: candidates x iterations (MPPI,
    CEM), gradient steps x restarts (shooting), Langevin steps x chains."""
    planner = getattr(planner, "inner", planner)
    for a, b in (("candidates", "iterations"), ("population", "iterations"),
                 ("iterations", "restarts"), ("steps", "chains")):
        if hasattr(planner, a) and hasattr(planner, b):
            return int(getattr(planner, a) * getattr(planner, b))
    return 0
