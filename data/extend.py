"""A dataset grown by new episodes: what an online loop (plan, collect, retrain) trains on.

:func:`extend_dataset` writes a new Minari-layout dataset holding every episode of a source
dataset followed by new ones (ids continuing), with the source's metadata, totals updated and
each addition recorded under ``trajebm.extended``. The source is read, never changed.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from trajebm.data import storage
from trajebm.data.metadata import OWN
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import fsync_dir


def extend_dataset(source: str | os.PathLike, states: np.ndarray, actions: np.ndarray,
                   out: str | os.PathLike, *, seeds: Sequence[int] | None = None,
                   rewards: np.ndarray | None = None, origin: dict[str, Any] | None = None,
                   dataset_id: str | None = None) -> Path:
    """Write ``out``: the dataset ``source`` plus episodes of ``states`` (E, T+1, D) and
    ``actions`` (E, T, A) (``seeds`` their reset seeds, ``origin`` how they were made).

    UsageError if ``out`` exists or the new episodes do not fit the source's layout.
    """
    src_dir, document = storage.read_metadata(source)
    own = document[OWN]
    out = Path(out)
    if out.exists():
        raise UsageError(f"{out} exists; choose a new folder for the grown dataset")
    if states.ndim != 3 or states.shape[2] != own["state_dim"]:
        raise UsageError(f"new states must be (E, T+1, {own['state_dim']}), got {states.shape}")
    if actions.shape != (len(states), states.shape[1] - 1, own["action_dim"]):
        raise UsageError(f"new actions must be {(len(states), states.shape[1] - 1)} x "
                         f"{own['action_dim']}, got {actions.shape}")
    seeds = list(seeds) if seeds is not None else [-1] * len(states)
    rewards = np.zeros(actions.shape[:2]) if rewards is None else rewards
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True)
    first = int(document["total_episodes"])
    main = data_dir / storage.MAIN_FILE
    with h5py.File(src_dir / storage.MAIN_FILE, "r") as src, \
            h5py.File(main, "w", track_order=True) as dst:
        for name in src:
            src.copy(src[name], dst, name=name)
        for i, (s, a) in enumerate(zip(states, actions, strict=True)):
            storage.write_group(dst, storage.Episode(
                id=first + i, seed=int(seeds[i]), observations=s.astype(np.float64),
                actions=a.astype(np.float32), rewards=rewards[i], goal=np.zeros(0)))
    storage.write_metadata(data_dir, grown_document(document, states, out, origin, dataset_id))
    fsync_dir(data_dir)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    return out


def grown_document(document: dict[str, Any], states: np.ndarray, out: Path,
                   origin: dict[str, Any] | None, dataset_id: str | None) -> dict[str, Any]:
    """The source's metadata with the new episodes counted and recorded."""
    grown = copy.deepcopy(dict(document))
    own = grown[OWN]
    added = len(states)
    grown["dataset_id"] = storage.check_dataset_id(dataset_id or
                                                   storage.default_dataset_id(out))
    grown["total_episodes"] = int(grown["total_episodes"]) + added
    grown["total_steps"] = int(grown["total_steps"]) + added * (states.shape[1] - 1)
    own["episodes"] = grown["total_episodes"]
    own.setdefault("extended", []).append(
        {"episodes": added, "length": states.shape[1] - 1, "origin": origin or {}})
    return grown
