"""Physics consistency of predicted states, through the simulator API of :mod:`trajebm.envs`.

For an action-conditional model, MuJoCo is set to each predicted s_t (velocities zero unless
the state holds them), steps a_t (:meth:`trajebm.envs.Simulator.step`), and the result is
compared with the predicted s_{t+1}; the same error of the true states is the reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from trajebm.data.metadata import DatasetInfo

if TYPE_CHECKING:
    from trajebm.envs import Simulator


@contextmanager
def physics_checker(info: DatasetInfo, needed: bool = True) -> Iterator[Simulator | None]:
    """A simulator of the dataset's env (reset with seed 0) for physics checks, closed on
    exit; None when not ``needed`` (no action-conditional model to check)."""
    if not needed:
        yield None
        return
    from trajebm.envs import Simulator

    simulator = Simulator.make(info.env_id, info.include_velocities, seed=0)
    try:
        yield simulator
    finally:
        simulator.close()


def physics_gaps(checker: Simulator, states: np.ndarray, actions: np.ndarray,
                 next_states: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Mean squared z-scored gap between simulated and given next states, per leading index
    of ``states`` (n, m, D) — e.g. per trajectory."""
    sim = checker.step(states.reshape(-1, states.shape[-1]),
                       actions.reshape(-1, actions.shape[-1]))
    gap = (sim - next_states.reshape(sim.shape)) / std
    return np.mean(gap.reshape(len(states), -1) ** 2, axis=1)


def physics_error(checker: Simulator, states: np.ndarray, actions: np.ndarray,
                  next_states: np.ndarray, std: np.ndarray) -> float:
    """Mean squared z-scored gap between simulated and given next states."""
    return float(np.mean(physics_gaps(checker, states, actions, next_states, std)))
