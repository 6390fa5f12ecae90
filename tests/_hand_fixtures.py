"""Tiny Shadow-hand datasets shared by the env, collection and dataset tests (built once)."""

from __future__ import annotations

import functools
from pathlib import Path

from trajebm.data.collection import CollectConfig, collect
from trajebm.data.policies import PolicyConfig

TINY = CollectConfig(episodes=10, length=12, policy=PolicyConfig("scripted"), seed=3,
                     chunk_episodes=4)


@functools.cache
def tiny_dataset(root: Path) -> Path:
    """Collect :data:`TINY` once under ``root`` and return the dataset folder."""
    out = root / "tiny"
    collect(TINY, out, workers=2, progress=False)
    return out
