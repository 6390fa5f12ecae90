"""Minari-layout files written and read with h5py: DIR/data/main_data.hdf5 + metadata.json.

Layout (as minari 0.5 writes it): one ``episode_{i}`` group per episode holding
``observations`` (T+1, D), ``actions`` (T, A), ``rewards``, ``terminations`` and
``truncations`` (T,), with attributes ``id``, ``seed``, ``total_steps`` and ``goal`` (and, in
a collection with hidden physics, one ``physics.NAME`` attribute per drawn factor). The metadata
holds the serialised spaces, ``dataset_id``, ``minari_version``, totals, the env spec and
our own provenance under the ``"trajebm"`` key. Files are byte-for-byte reproducible: no
HDF5 timestamps, fixed object order.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import atomic_write_bytes, fsync_dir

MAIN_FILE = "main_data.hdf5"
METADATA_FILE = "metadata.json"
MINARI_FORMAT_VERSION = "0.5.4"
FORMAT_NAME = "trajebm-shadowhand"
SHARD_FORMAT_NAME = "trajebm-shadowhand-shard"
PARTIAL_DIR = ".partial"
"""Where a collection keeps its finished chunks until it is done (``DIR/.partial/``)."""
MANIFEST_FILE = "collect.json"
"""The settings of an unfinished collection, in :data:`PARTIAL_DIR` (what resume must match)."""
PHYSICS_ATTR = "physics."
"""Prefix of an episode group's hidden-physics factor attributes (``physics.object_mass``)."""
DATASET_ID_RE = re.compile(r"^(?:[-_\w][-_\w/]*[-_\w]+/)?[-_\w]+?(?:-v\d+)?$")


@dataclass
class Episode:
    """One trajectory: T+1 states, T actions and rewards, and the seeds that produced it."""

    id: int
    seed: int
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    goal: np.ndarray
    physics: dict[str, float] = field(default_factory=dict)
    """Hidden physics factors of the episode (:mod:`trajebm.data.randomize`); none if empty."""

    @property
    def length(self) -> int:
        """Steps T (actions) of the episode."""
        return len(self.actions)


def write_group(file: h5py.File, ep: Episode) -> None:
    """Add ``ep`` to an open file as group ``episode_{id}`` in the Minari layout."""
    group = file.create_group(f"episode_{ep.id}")
    group.attrs["id"] = ep.id
    group.attrs["seed"] = ep.seed
    group.attrs["total_steps"] = ep.length
    group.attrs["goal"] = ep.goal
    for name in sorted(ep.physics):
        group.attrs[PHYSICS_ATTR + name] = ep.physics[name]
    truncations = np.zeros(ep.length, dtype=bool)
    truncations[-1] = True
    for key, value in (
        ("observations", ep.observations),
        ("actions", ep.actions),
        ("rewards", ep.rewards),
        ("terminations", np.zeros(ep.length, dtype=bool)),
        ("truncations", truncations),
    ):
        group.create_dataset(key, data=value, track_times=False)


def write_episodes(path: Path, episodes: list[Episode]) -> None:
    """Durably write ``episodes`` to a new HDF5 file at ``path`` (temp name, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w", track_order=True) as file:
        for ep in episodes:
            write_group(file, ep)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_episodes(path: Path) -> list[Episode]:
    """All episodes stored in one HDF5 file, in id order."""
    with h5py.File(path, "r") as file:
        episodes = [
            Episode(
                id=int(g.attrs["id"]), seed=int(g.attrs["seed"]),
                observations=g["observations"][()], actions=g["actions"][()],
                rewards=g["rewards"][()], goal=np.asarray(g.attrs["goal"]),
                physics=episode_physics(g),
            )
            for g in file.values()
        ]
    return sorted(episodes, key=lambda ep: ep.id)


def episode_physics(group: h5py.Group) -> dict[str, float]:
    """The hidden physics factors recorded on an episode group (empty if none)."""
    return {key[len(PHYSICS_ATTR):]: float(value) for key, value in group.attrs.items()
            if key.startswith(PHYSICS_ATTR)}


def merge_episode_files(parts: list[Path], out: Path) -> None:
    """Concatenate the episodes of ``parts`` (already in id order) into a new file ``out``."""
    tmp = out.with_name(f".{out.name}.tmp")
    with h5py.File(tmp, "w", track_order=True) as file:
        for part in parts:
            for ep in read_episodes(part):
                write_group(file, ep)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)
    fsync_dir(out.parent)


def serialize_box(low: np.ndarray, high: np.ndarray, dtype: str) -> str:
    """A Box space serialised as minari does (a JSON string)."""
    return json.dumps(
        {"type": "Box", "dtype": dtype, "shape": list(np.shape(low)),
         "low": np.asarray(low).tolist(), "high": np.asarray(high).tolist()}
    )


def default_dataset_id(out: Path) -> str:
    """The dataset id for ``out``: its path below MINARI_DATASETS_PATH if there, else its name."""
    root = os.environ.get("MINARI_DATASETS_PATH")
    name = out.name
    if root:
        try:
            name = out.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    name = re.sub(r"[^-_\w/]", "_", name)
    if not re.search(r"-v\d+$", name):
        name += "-v0"
    return name


def check_dataset_id(dataset_id: str) -> str:
    """``dataset_id`` if it is a valid minari id ``(namespace/)name-vN``, else UsageError."""
    if not DATASET_ID_RE.match(dataset_id):
        raise UsageError(f"invalid dataset id {dataset_id!r}; use (namespace/)name-vN")
    return dataset_id


def write_metadata(data_dir: Path, metadata: dict[str, Any]) -> None:
    """Atomically write ``metadata.json`` (key order kept, so the bytes are reproducible)."""
    atomic_write_bytes(data_dir / METADATA_FILE, (json.dumps(metadata, indent=2) + "\n").encode())


def read_metadata(root: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The data folder and metadata of a trajebm dataset at ``root`` (DIR or DIR/data)."""
    root = Path(root)
    data_dir = root if (root / METADATA_FILE).exists() else root / "data"
    meta_path = data_dir / METADATA_FILE
    if not root.exists():
        raise UsageError(f"{root} does not exist")
    if not meta_path.is_file() or not (data_dir / MAIN_FILE).is_file():
        raise UsageError(f"{root} is not a dataset (no data/{METADATA_FILE} and data/{MAIN_FILE})")
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{meta_path} is not valid JSON: {err}") from None
    fmt = metadata.get("trajebm", {}).get("format") if isinstance(metadata, dict) else None
    if fmt == SHARD_FORMAT_NAME:
        raise UsageError(f"{root} is one shard of a collection; join the shards with "
                         "`trajebm dataset merge`")
    if fmt != FORMAT_NAME:
        raise UsageError(f"{root} is not a trajebm Shadow-hand dataset (see `trajebm collect`)")
    return data_dir, metadata
