"""Plan, execute in MuJoCo, and score what really happened: the `trajebm plan` job.

Every episode starts from the env's own seeded reset, draws its goal from the task's seeded
generator, and runs ``length`` control steps; each step the planner (:mod:`.planners`)
chooses an action for every episode at once from what the model (or, for the oracle, the
simulator) predicts, and MuJoCo executes them (``trajebm.envs.Simulator.closed_loop``, equal
to stepping the gymnasium env). Success and error are judged on the true states.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trajebm.engine.errors import UsageError
from trajebm.plan.planners import ACTION_DIM, Planner, Situation
from trajebm.plan.tasks import POSITION, TASKS, Task

DEFAULT_ENV = "trajebm/ShadowHandBlock-v0"


def reset_seeds(seed: int, episodes: int) -> np.ndarray:
    """The env reset seed of each episode of a run seeded ``seed``."""
    seq = np.random.SeedSequence(seed).spawn(episodes)
    return np.array([int(s.generate_state(1)[0]) for s in seq], dtype=np.int64)


def goal_generator(seed: int, task: str) -> np.random.Generator:
    """The generator of a run's goals: from the run seed and the task (never from a model)."""
    return np.random.default_rng([seed, list(TASKS).index(task)])


@dataclass
class Episodes:
    """What a batch of planned episodes did, and what their plans expected."""

    reset_seed: np.ndarray
    goal: np.ndarray
    actions: np.ndarray
    states: np.ndarray
    predicted_final: np.ndarray
    success: np.ndarray
    final_error: np.ndarray
    predicted_error: np.ndarray
    ms_per_step: float
    extra: dict[str, Any] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-episode arrays (what ``episodes.npz`` holds)."""
        return {"reset_seed": self.reset_seed, "goal": self.goal, "actions": self.actions,
                "states": self.states, "predicted_final": self.predicted_final,
                "success": self.success, "final_error": self.final_error,
                "predicted_error": self.predicted_error}

    def summary(self) -> dict[str, Any]:
        """Success rate, median errors, the self-deception gap and the planning time."""
        gap = self.predicted_error - self.final_error
        finite = np.isfinite(gap)
        return {"episodes": len(self.success), "success_rate": float(self.success.mean()),
                "final_error": float(np.median(self.final_error)),
                "predicted_error": float(np.median(self.predicted_error[finite]))
                if finite.any() else None,
                "self_deception": float(np.median(gap[finite])) if finite.any() else None,
                "ms_per_step": self.ms_per_step, **self.extra}


def initial_states(simulator, seeds: np.ndarray) -> np.ndarray:
    """Integration states right after ``env.reset(seed)`` for each seed."""
    out = []
    for seed in seeds:
        simulator.env.reset(seed=int(seed))
        out.append(simulator.snapshot(simulator.env.data)[2])
    return np.stack(out)


def run_episodes(planner: Planner, task: Task, simulator, seeds: np.ndarray, goal_rng:
                 np.random.Generator, length: int = 50, oracle: bool = False,
                 progress: bool = False, exploration: float = 0.0,
                 noise_rng: np.random.Generator | None = None) -> Episodes:
    """Plan and execute ``len(seeds)`` episodes of ``length`` steps in one batch.

    ``exploration`` adds N(0, σ²) noise (from ``noise_rng``) to every executed action, as an
    online loop collecting data does; the actions recorded are the ones executed.
    """
    if length < 1:
        raise UsageError(f"length must be >= 1, got {length}")
    initial = initial_states(simulator, seeds)
    start = simulator.state_vectors(initial)
    goal = task.goals(start, goal_rng)
    n = len(seeds)
    actions = np.zeros((n, length, ACTION_DIM))
    history: list[np.ndarray] = []
    horizon = max(planner.horizon, 1)
    when = max(0, length - horizon)
    predicted = np.full((n, start.shape[1]), np.nan)
    timer = [0.0]
    planner.reset(n)
    bar = _bar(length, progress)

    def act(states: np.ndarray, t: int, integration: np.ndarray | None = None) -> np.ndarray:
        history.append(states)
        physics = simulator.physics_from_integration(integration) if oracle else None
        now = Situation(np.stack(history, 1), goal, start[:, POSITION.stop - 1], t,
                        actions[:, t - 1] if t else np.zeros((n, ACTION_DIM)), physics)
        t0 = time.perf_counter()
        chosen = planner.act(now)
        timer[0] += time.perf_counter() - t0
        if exploration > 0:
            chosen = chosen + exploration * noise_rng.standard_normal(chosen.shape)
        chosen = np.clip(chosen, -1.0, 1.0)
        if t == when and planner.prediction is not None:
            predicted[:] = planner.prediction[:, length - when - 1]
        actions[:, t] = chosen
        bar.update(1)
        return chosen

    states = simulator.closed_loop(initial, length, act, physics=oracle)
    bar.close()
    final_error = task.final_error(states, goal)
    predicted_error = np.asarray(task.error(predicted, goal))
    return Episodes(seeds, goal, actions, states, predicted, task.success(states, goal),
                    final_error, predicted_error, 1000.0 * timer[0] / (length * n),
                    {"batch": n})


def _bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="plan", unit="step", disable=not progress, leave=False)
