"""Reading trajectory datasets: windows, whole trajectories, split by trajectory, z-score stats.

A window is (k context states s_{t-k+1..t}, action a_t, next state s_{t+1}); all windows
are cut at once with fancy indexing. Episodes are split into train/test by a seeded
permutation of trajectory ids, and normalisation statistics use the training split only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from trajebm.data import storage
from trajebm.engine.errors import UsageError

SPLITS = ("train", "val", "test", "all")
RELATIVE_FLOOR = 0.01
ABSOLUTE_FLOOR = 1e-6


class Windows(NamedTuple):
    """Training examples: ``context`` (M, k, D), ``action`` (M, A), ``next_state`` (M, D).

    With ``horizon`` H > 1 (:meth:`TrajectoryDataset.windows`) ``action`` is (M, H, A) and
    ``next_state`` (M, H, D): the H actions from a_t on and the H states they lead to.
    """

    context: np.ndarray
    action: np.ndarray
    next_state: np.ndarray


@dataclass(frozen=True)
class NormStats:
    """Per-dimension mean and standard deviation, floored so near-constant dims stay tame.

    A dimension that barely moves in the data (a locked joint, a resting object) would be
    blown up by z-scoring until numerical noise dominates every distance and gradient. Its std
    is raised to ``RELATIVE_FLOOR`` times the median std of all dimensions; ``floored`` lists
    the dimensions that hit the floor.
    """

    mean: np.ndarray
    std: np.ndarray
    floored: tuple[int, ...] = ()

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def denormalize(self, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean

    @classmethod
    def of(cls, x: np.ndarray, dtype: str | np.dtype = "float64") -> NormStats:
        """Statistics of the rows of ``x``, computed in float64 and stored as ``dtype``."""
        x = x.reshape(-1, x.shape[-1]).astype(np.float64)
        std = x.std(axis=0)
        floor = max(RELATIVE_FLOOR * float(np.median(std)), ABSOLUTE_FLOOR)
        floored = tuple(int(i) for i in np.flatnonzero(std < floor))
        std = np.maximum(std, floor)
        return cls(x.mean(axis=0).astype(dtype), std.astype(dtype), floored)


class TrajectoryDataset:
    """A collected dataset split by trajectory, cut into windows of ``context`` states.

    Episodes are split into test (``test_fraction``, by a permutation seeded with ``seed``),
    validation (``val_fraction`` of the rest, for model selection) and train. The test split
    depends on ``seed`` and ``test_fraction`` only, so adding a validation split never moves
    a test trajectory. Everything is held in memory as ``dtype`` arrays (use float32 for
    torch training); ``torch.from_numpy`` on the arrays of :meth:`windows` gives tensors.
    """

    def __init__(self, path: str | os.PathLike, context: int = 4, test_fraction: float = 0.1,
                 seed: int = 0, dtype: str | np.dtype = "float64",
                 val_fraction: float = 0.0) -> None:
        if context <= 0:
            raise UsageError(f"context must be positive, got {context}")
        if not 0.0 <= test_fraction < 1.0:
            raise UsageError(f"test_fraction must be in [0, 1), got {test_fraction}")
        if not 0.0 <= val_fraction < 1.0:
            raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.path = Path(path)
        self.context = context
        self.split = {"seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction}
        self.metadata, self._states, self._actions = storage.load_arrays(path)
        lengths = np.array([len(a) for a in self._actions])
        short = np.flatnonzero(lengths < context)
        if len(short):
            raise UsageError(
                f"episode {short[0]} has {lengths[short[0]]} steps; a window of {context} "
                f"context states needs at least {context}"
            )
        n = len(self._states)
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
        self.state_stats = NormStats.of(np.concatenate([self._states[i] for i in train]), dtype)
        self.action_stats = NormStats.of(np.concatenate([self._actions[i] for i in train]), dtype)
        self._states = [s.astype(dtype, copy=False) for s in self._states]
        self._actions = [a.astype(dtype, copy=False) for a in self._actions]

    @property
    def state_names(self) -> list[str]:
        return list(self.metadata["trajebm"]["state_names"])

    @property
    def state_dim(self) -> int:
        return self._states[0].shape[1]

    @property
    def action_dim(self) -> int:
        return self._actions[0].shape[1]

    @property
    def num_episodes(self) -> int:
        return len(self._states)

    def _ids(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        return self.split_ids[split]

    def trajectories(self, split: str = "test", normalized: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
        """States (n, T+1, D) and actions (n, T, A) of the whole episodes in ``split``."""
        ids = self._ids(split)
        if len({len(self._actions[i]) for i in ids}) > 1:
            raise UsageError("episodes have different lengths; use windows() instead")
        states = np.stack([self._states[i] for i in ids]) if len(ids) else np.zeros((0, 0, 0))
        actions = np.stack([self._actions[i] for i in ids]) if len(ids) else np.zeros((0, 0, 0))
        if normalized and len(ids):
            states = self.state_stats.normalize(states)
        return states, actions

    def windows(self, split: str = "train", normalized: bool = False, horizon: int = 1
                ) -> Windows:
        """Every (context, action(s), next state(s)) window of the episodes in ``split``."""
        ids = self._ids(split)
        k, h = self.context, horizon
        if h < 1:
            raise UsageError(f"horizon must be >= 1, got {h}")
        lengths = np.array([len(self._actions[i]) for i in ids], dtype=int)
        per_episode = np.maximum(lengths - k - h + 2, 0)
        if not per_episode.sum():
            d, a = self.state_dim, self.action_dim
            lead = (0,) if h == 1 else (0, h)
            return Windows(np.zeros((0, k, d)), np.zeros((*lead, a)), np.zeros((*lead, d)))
        states = np.concatenate([self._states[i] for i in ids])
        actions = np.concatenate([self._actions[i] for i in ids])
        state_start = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
        action_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        episode = np.repeat(np.arange(len(ids)), per_episode)
        offset = np.repeat(np.cumsum(per_episode) - per_episode, per_episode)
        t = np.arange(per_episode.sum()) - offset
        first = state_start[episode] + t
        context = states[first[:, None] + np.arange(k)]
        ahead = np.arange(h)
        next_state = states[first[:, None] + k + ahead]
        action = actions[(action_start[episode] + t + k - 1)[:, None] + ahead]
        if h == 1:
            next_state, action = next_state[:, 0], action[:, 0]
        if normalized:
            context = self.state_stats.normalize(context)
            next_state = self.state_stats.normalize(next_state)
        return Windows(context, action, next_state)

    def __len__(self) -> int:
        return self.num_episodes


def _split_size(fraction: float, n: int) -> int:
    """Episodes in a split of ``fraction`` of ``n``: at least one when asked for, never all."""
    if fraction <= 0 or n <= 1:
        return 0
    return min(max(int(round(fraction * n)), 1), n - 1)


def dataset_info(path: str | os.PathLike) -> dict[str, Any]:
    """A summary of the dataset at ``path``: sizes, dims, policy, seeds and versions."""
    metadata, states, actions = storage.load_arrays(path)
    own = metadata["trajebm"]
    lengths = [len(a) for a in actions]
    floored = NormStats.of(np.concatenate(states)).floored if states else ()
    return {
        "path": str(path),
        "dataset_id": metadata["dataset_id"],
        "env_id": own["env_id"],
        "episodes": len(states),
        "steps": int(sum(lengths)),
        "episode_length": (min(lengths), max(lengths)) if lengths else (0, 0),
        "state_dim": own["state_dim"],
        "action_dim": own["action_dim"],
        "include_velocities": own["include_velocities"],
        "policy": own["policy"],
        "seed": own["seed"],
        "versions": own["collection"]["versions"],
        "git_commit": own["git_commit"],
        "minari_version": metadata["minari_version"],
        "normalization_floored": [own["state_names"][i] for i in floored],
    }


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
    }
    return "\n".join(f"{key + ':':<15}{value}" for key, value in lines.items())
