"""Trajectory datasets: collection in MuJoCo, Minari-layout HDF5 files, windowed readers.

Names are imported lazily so that ``trajebm --help`` and the dataset reader do not load
MuJoCo; ``trajebm.data.collect`` and ``trajebm.data.render_episode`` do.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CollectConfig": "collection",
    "RolloutCollector": "collection",
    "collect": "collection",
    "episode_seeds": "collection",
    "PolicyConfig": "policies",
    "POLICIES": "policies",
    "policy_actions": "policies",
    "Episode": "storage",
    "read_metadata": "storage",
    "merge_shards": "shards",
    "DatasetInfo": "metadata",
    "read_info": "metadata",
    "PDController": "controllers",
    "FactorRange": "randomize",
    "parse_randomize": "randomize",
    "randomized_model": "randomize",
    "EpisodeArrays": "cache",
    "episode_arrays": "cache",
    "write_synthetic_dataset": "synthetic",
    "NormStats": "dataset",
    "TrajectoryDataset": "dataset",
    "Windows": "dataset",
    "dataset_info": "dataset",
    "format_info": "dataset",
    "render_episode": "render",
    "render_frames": "render",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trajebm.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"trajebm.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
