"""A model's test split, its rollouts from the test starts, and their scores.

Every model is scored on the test trajectories of the split it was trained on (its recorded
split seed and fraction), rolling out from the first k true states of each (feeding the true
actions when action-conditional); :mod:`~trajebm.evaluate.metrics` and
:mod:`~trajebm.evaluate.physics` give the scores.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from trajebm.data.dataset import NormStats, TrajectoryDataset
from trajebm.data.metadata import DatasetInfo
from trajebm.engine.errors import UsageError
from trajebm.evaluate.config import EvalConfig
from trajebm.evaluate.metrics import (
    dimension_groups,
    fd_size_warning,
    physics_triplets,
    prediction_scores,
)
from trajebm.evaluate.physics import physics_gaps
from trajebm.evaluate.report import REPORT_STEPS
from trajebm.evaluate.scores import score_summary, start_scores
from trajebm.models import TrajectoryModel
from trajebm.rollout import predict_rollouts, usable_horizon

if TYPE_CHECKING:
    from trajebm.envs import Simulator


@dataclass
class TestSet:
    """The test trajectories of one split, with what scoring needs to know about them."""

    __test__ = False  # not a pytest test class

    states: np.ndarray
    actions: np.ndarray
    train_states: np.ndarray
    stats: NormStats
    info: DatasetInfo
    split: dict[str, Any]

    @property
    def names(self) -> list[str]:
        """The name of each state dimension."""
        return list(self.info.state_names)

    def groups(self) -> dict[str, np.ndarray]:
        """Dimensions scored separately: the whole state, hand joint positions, object pose."""
        return dimension_groups(self.names)


def load_test_set(data: str | os.PathLike, split: dict[str, Any], context: int,
                  max_episodes: int | None = None) -> TestSet:
    """The test trajectories of ``split`` (seed, test_fraction) of the dataset at ``data``."""
    ds = TrajectoryDataset(data, context=context, test_fraction=split["test_fraction"],
                           seed=split["seed"], dtype="float32")
    states, actions = ds.trajectories("test", limit=max_episodes or None)
    if len(states) < 2:
        raise UsageError(f"{data}: the test split (fraction {split['test_fraction']}, seed "
                         f"{split['seed']}) has {len(states)} trajectories; scoring needs at "
                         f"least 2")
    train_states, _ = ds.trajectories("train")
    return TestSet(states, actions, train_states, ds.state_stats, ds.info,
                   {k: split[k] for k in ("seed", "test_fraction")})


def check_fd_size(test: TestSet) -> str | None:
    """A warning when there are too few test starts for a stable FD in this many dims."""
    message = fd_size_warning(len(test.states), test.states.shape[-1])
    if message is not None:
        warnings.warn(message, stacklevel=3)
    return message


def predict_test(model: TrajectoryModel, test: TestSet, cfg: EvalConfig) -> np.ndarray:
    """Rollouts (n, S, H, D) in original units from the first k states of every test
    trajectory; S = 1 for a deterministic model (more samples would be identical copies)."""
    k = model.config.context
    horizon = usable_horizon(cfg.horizon, test.states.shape[1], k)
    acts = test.actions[:, k - 1 : k - 1 + horizon] if model.config.conditional else None
    samples = 1 if model.deterministic else cfg.samples
    return predict_rollouts(model, test.states[:, :k], acts, horizon, samples,
                            cfg.langevin_steps, seed=cfg.seed, device=cfg.device,
                            progress=cfg.progress)


def rollout_physics(checker: Simulator, test: TestSet, rollouts: np.ndarray, k: int,
                    episodes: int, every: int) -> np.ndarray:
    """Physics gaps per start of rollouts (n, H, D) from ``k`` context states of the test
    trajectories: the first ``episodes`` starts, every ``every``-th step."""
    horizon = rollouts.shape[1]
    acts = test.actions[:episodes, k - 1 : k - 1 + horizon]
    triplets = physics_triplets(test.states[:episodes, k - 1], rollouts[:episodes], acts, every)
    return physics_gaps(checker, *triplets, test.stats.std)


def score_predictions(pred: np.ndarray, test: TestSet, k: int, cfg: EvalConfig,
                      checker: Simulator | None = None) -> dict[str, Any]:
    """FD per step (per dimension group), MSE per start and step, spread, physics error."""
    norm = test.stats.normalize
    horizon = pred.shape[2]
    entry = prediction_scores(norm(pred), norm(test.states[:, k : k + horizon]), test.groups())
    entry.update(physics_error=None, physics_per_start=None)
    if checker is not None:
        gaps = rollout_physics(checker, test, pred[:, 0], k, cfg.physics_episodes,
                               cfg.physics_every)
        entry["physics_error"], entry["physics_per_start"] = float(gaps.mean()), gaps.tolist()
    return entry


def starts_scored(pred: np.ndarray, truth: np.ndarray, groups: dict[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
    """Proper scores per start (:func:`~trajebm.evaluate.scores.start_scores`) of z-scored
    predictions (n, S, H, D) against the truth (n, H, D), at the report steps."""
    steps = sorted({min(t, pred.shape[2]) for t in REPORT_STEPS})
    return start_scores(pred.astype(np.float64), truth.astype(np.float64), groups, steps)


def proper_scores(pred: np.ndarray, test: TestSet, k: int) -> dict[str, Any]:
    """Energy score, CRPS, coverage and spread–skill of rollouts (n, S, H, D) in original
    units: means over the test starts with bootstrap intervals, and the calibration curve."""
    norm = test.stats.normalize
    truth = norm(test.states[:, k : k + pred.shape[2]])
    return score_summary([starts_scored(norm(pred), truth, test.groups())], pred.shape[1])
