"""Reading trajectory datasets: windows, whole trajectories, split by trajectory, z-score stats.

A window is (k context states s_{t-k+1..t}, action a_t, next state s_{t+1}). Episodes are read
through the consolidated cache (:mod:`trajebm.data.cache`): flat memory-mapped arrays, so a
window is a start row and any set of windows is gathered with one fancy index, and a dataset
of 200,000 episodes opens in seconds without loading it. Episodes are split into train/test
by a seeded permutation of trajectory ids, and normalisation statistics use the training split
only (exact, from per-episode moments).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from trajebm.data.cache import episode_arrays
from trajebm.data.metadata import DatasetInfo
from trajebm.engine.errors import UsageError
from trajebm.engine.normalize import RELATIVE_FLOOR, NormStats

__all__ = ["RELATIVE_FLOOR", "SPLITS", "NormStats", "TrajectoryDataset", "Windows",
           "dataset_info", "format_info"]

SPLITS = ("train", "val", "test", "all")


class Windows(NamedTuple):
    """Training examples: ``context`` (M, k, D), ``action`` (M, A), ``next_state`` (M, D).

    With ``horizon`` H > 1 (:meth:`TrajectoryDataset.windows`) ``action`` is (M, H, A) and
    ``next_state`` (M, H, D): the H actions from a_t on and the H states they lead to.
    """

    context: np.ndarray
    action: np.ndarray
    next_state: np.ndarray


class TrajectoryDataset:
    """A collected dataset split by trajectory, cut into windows of ``context`` states.

    Episodes are split into test (``test_fraction``, by a permutation seeded with ``seed``),
    validation (``val_fraction`` of the rest, for model selection) and train. The test split
    depends on ``seed`` and ``test_fraction`` only, so adding a validation split never moves
    a test trajectory. The data stay memory-mapped and are stored as float32, so what a method
    returns is ``dtype`` (use float32 for torch training) holding float32-rounded values, also
    for float64; the statistics come from the stored values exactly. For large datasets use
    :meth:`window_starts` and :meth:`gather` (a batch at a time) rather than :meth:`windows`.
    What the metadata says (env, state names, time step, ...) is :attr:`info`.
    """

    def __init__(self, path: str | os.PathLike, context: int = 4, test_fraction: float = 0.1,
                 seed: int = 0, dtype: str | np.dtype = "float64",
                 val_fraction: float = 0.0, progress: bool = True) -> None:
        if context <= 0:
            raise UsageError(f"context must be positive, got {context}")
        if not 0.0 <= test_fraction < 1.0:
            raise UsageError(f"test_fraction must be in [0, 1), got {test_fraction}")
        if not 0.0 <= val_fraction < 1.0:
            raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.path = Path(path)
        self.context = context
        self.dtype = np.dtype(dtype)
        self.split = {"seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction}
        self.info: DatasetInfo
        self.info, self.arrays = episode_arrays(path, progress)
        lengths = self.arrays.lengths
        short = np.flatnonzero(lengths < context)
        if len(short):
            raise UsageError(
                f"episode {short[0]} has {lengths[short[0]]} steps; a window of {context} "
                f"context states needs at least {context}"
            )
        n = self.arrays.num_episodes
        n_test = _split_size(test_fraction, n)
        order = np.random.default_rng(seed).permutation(n)
        rest = order[n_test:]
        n_val = _split_size(val_fraction, len(rest))
        val = np.random.default_rng([seed, 1]).permutation(rest)[:n_val]
        self.split_ids = {
            "train": np.setdiff1d(rest, val),
            "val": np.sort(val),
            "test": np.sort(order[:n_test]),
            "all": np.arange(n),
        }
        train = self.split_ids["train"]
        self.state_stats = NormStats.of_moments(self.arrays.moments(train, "state"), dtype)
        self.action_stats = NormStats.of_moments(self.arrays.moments(train, "action"), dtype)

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The raw ``metadata.json`` document; read :attr:`info` instead where it has the key."""
        return self.info.document

    @property
    def state_names(self) -> list[str]:
        """The name of each state dimension."""
        return list(self.info.state_names)

    @property
    def state_dim(self) -> int:
        """State width D."""
        return self.arrays.states.shape[1]

    @property
    def action_dim(self) -> int:
        """Action width A."""
        return self.arrays.actions.shape[1]

    @property
    def num_episodes(self) -> int:
        """Episodes in the dataset (all splits)."""
        return self.arrays.num_episodes

    def _ids(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        return self.split_ids[split]

    def _states(self, rows: np.ndarray, normalized: bool) -> np.ndarray:
        x = self.arrays.states[rows].astype(self.dtype, copy=False)
        return self.state_stats.normalize(x) if normalized else x

    def trajectories(self, split: str = "test", normalized: bool = False,
                     limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """States (n, T+1, D) and actions (n, T, A) of the whole episodes in ``split`` (the
        first ``limit`` of them, if given)."""
        ids = self._ids(split)[:limit]
        if not len(ids):
            return np.zeros((0, 0, 0), self.dtype), np.zeros((0, 0, 0), self.dtype)
        lengths = self.arrays.lengths[ids]
        if lengths.min() != lengths.max():
            raise UsageError("episodes have different lengths; use windows() instead")
        steps = np.arange(lengths[0] + 1)
        states = self._states(self.arrays.state_start[ids][:, None] + steps, normalized)
        actions = self.arrays.actions[self.arrays.action_start[ids][:, None] + steps[:-1]]
        return states, actions.astype(self.dtype, copy=False)

    def window_starts(self, split: str = "train", horizon: int = 1) -> np.ndarray:
        """The flat state row of the first context state of every window of ``split``, int64.

        A window holds ``context`` states then ``horizon`` actions and next states; episode
        order, then time order. Pass (a subset of) them to :meth:`gather`.
        """
        ids = self._ids(split)
        if horizon < 1:
            raise UsageError(f"horizon must be >= 1, got {horizon}")
        per_episode = np.maximum(self.arrays.lengths[ids] - self.context - horizon + 2, 0)
        total = int(per_episode.sum())
        first = np.repeat(self.arrays.state_start[ids], per_episode)
        offset = np.repeat(np.cumsum(per_episode) - per_episode, per_episode)
        return first + (np.arange(total) - offset)

    def gather(self, starts: np.ndarray, horizon: int = 1, normalized: bool = False) -> Windows:
        """The windows beginning at state rows ``starts`` (from :meth:`window_starts`)."""
        k, starts = self.context, np.asarray(starts, dtype=np.int64)
        episode = np.searchsorted(self.arrays.state_start, starts, side="right") - 1
        ahead = np.arange(horizon)
        context = self._states(starts[:, None] + np.arange(k), normalized)
        next_state = self._states(starts[:, None] + k + ahead, normalized)
        first_action = starts - episode + k - 1
        action = self.arrays.actions[first_action[:, None] + ahead].astype(self.dtype,
                                                                           copy=False)
        if horizon == 1:
            next_state, action = next_state[:, 0], action[:, 0]
        return Windows(context, action, next_state)

    def windows(self, split: str = "train", normalized: bool = False, horizon: int = 1
                ) -> Windows:
        """Every (context, action(s), next state(s)) window of the episodes in ``split``."""
        return self.gather(self.window_starts(split, horizon), horizon, normalized)

    def __len__(self) -> int:
        return self.num_episodes


def _split_size(fraction: float, n: int) -> int:
    """Episodes in a split of ``fraction`` of ``n``: at least one when asked for, never all."""
    if fraction <= 0 or n <= 1:
        return 0
    return min(max(int(round(fraction * n)), 1), n - 1)


def dataset_info(path: str | os.PathLike) -> dict[str, Any]:
    """A summary of the dataset at ``path``: sizes, dims, policy, seeds and versions."""
    info, arrays = episode_arrays(path, progress=False)
    lengths = arrays.lengths
    ids = np.arange(arrays.num_episodes)
    floored = NormStats.of_moments(arrays.moments(ids)).floored if len(ids) else ()
    return {
        "path": str(path),
        "dataset_id": info.dataset_id,
        "env_id": info.env_id,
        "episodes": len(lengths),
        "steps": int(lengths.sum()),
        "episode_length": (int(lengths.min()), int(lengths.max())) if len(ids) else (0, 0),
        "state_dim": info.state_dim,
        "action_dim": info.action_dim,
        "include_velocities": info.include_velocities,
        "policy": dict(info.policy),
        "seed": info.seed,
        "versions": info.simulator_versions,
        "git_commit": info.git_commit,
        "minari_version": info.minari_version,
        "normalization_floored": [info.state_names[i] for i in floored],
        "randomize": dict(info.randomize or {}),
        "actuation_noise": info.actuation_noise or 0.0,
    }


def _format_hidden(randomize: dict[str, tuple[float, float]], noise: float) -> str:
    """The hidden physics of ``dataset_info`` on one line."""
    parts = [f"{name} x{low:g}..{high:g}" for name, (low, high) in randomize.items()]
    if parts:
        parts[-1] += " (log-uniform per episode)"
    if noise:
        parts.append(f"actuation noise sigma={noise:g}")
    return ", ".join(parts) or "none"


def format_info(info: dict[str, Any]) -> str:
    """``dataset_info`` as aligned ``key: value`` lines for the terminal."""
    lo, hi = info["episode_length"]
    policy = dict(info["policy"])
    name = policy.pop("name")
    lines = {
        "dataset": f"{info['dataset_id']} ({info['path']})",
        "env": info["env_id"],
        "episodes": info["episodes"],
        "steps": f"{info['steps']} (episode length {lo if lo == hi else f'{lo}-{hi}'})",
        "state dim": f"{info['state_dim']}"
        + (" (positions + velocities)" if info["include_velocities"] else " (positions)"),
        "action dim": info["action_dim"],
        "policy": f"{name} " + " ".join(f"{k}={v}" for k, v in policy.items()),
        "seed": info["seed"],
        "versions": " ".join(f"{k}={v}" for k, v in info["versions"].items()),
        "git commit": info["git_commit"],
        "minari format": info["minari_version"],
        "near-constant": ", ".join(info["normalization_floored"]) or "none (no dim hits the "
                         "z-score floor)",
        "hidden": _format_hidden(info["randomize"], info["actuation_noise"]),
    }
    return "\n".join(f"{key + ':':<15}{value}" for key, value in lines.items())
