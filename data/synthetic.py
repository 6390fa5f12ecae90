"""Synthetic datasets in the Minari layout, written straight to disk without simulation.

For measuring the data path at the paper's scale (200,000 trajectories of 100 steps) in
minutes rather than the days collection would take, and for tests that need many episodes.
States are per-episode random walks of ``state_dim`` numbers, actions uniform in [-1, 1]:
shapes, dtypes and layout are those of a collected dataset, the dynamics are not.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from trajebm.data import storage
from trajebm.data.metadata import synthetic_document
from trajebm.engine.errors import UsageError

SYNTHETIC_ENV = "synthetic"
_BLOCK = 1000


def write_synthetic_dataset(out: str | os.PathLike, episodes: int, length: int = 100,
                            state_dim: int = 31, action_dim: int = 20, seed: int = 0,
                            progress: bool = True) -> Path:
    """Write ``episodes`` random-walk trajectories of ``length`` steps to ``out``; return ``out``.

    ``out/data/main_data.hdf5`` and ``out/data/metadata.json`` as ``trajebm collect`` writes
    them (float64 observations, float32 actions), readable by :class:`TrajectoryDataset`.
    """
    if episodes < 1 or length < 1 or state_dim < 1 or action_dim < 1:
        raise UsageError("episodes, length, state_dim and action_dim must be positive")
    out = Path(out)
    if out.exists():
        raise UsageError(f"{out} already exists; choose a new folder")
    data_dir = out / "data"
    data_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    with h5py.File(data_dir / storage.MAIN_FILE, "w", track_order=True) as file, tqdm(
        total=episodes, desc="synthetic", unit="ep", disable=not progress, mininterval=2.0
    ) as bar:
        for first in range(0, episodes, _BLOCK):
            n = min(_BLOCK, episodes - first)
            start = rng.normal(size=(n, 1, state_dim))
            steps = 0.05 * rng.normal(size=(n, length, state_dim))
            states = np.concatenate([start, start + np.cumsum(steps, axis=1)], axis=1)
            actions = rng.uniform(-1, 1, (n, length, action_dim)).astype(np.float32)
            for j in range(n):
                storage.write_group(file, storage.Episode(
                    id=first + j, seed=seed, observations=states[j], actions=actions[j],
                    rewards=np.zeros(length), goal=np.zeros(0)))
            bar.update(n)
    metadata = synthetic_document(storage.default_dataset_id(out), SYNTHETIC_ENV, episodes,
                                  length, state_dim, action_dim, seed)
    storage.write_metadata(data_dir, metadata)
    return out
