"""A dataset's ``metadata.json``, typed: what was collected, how, and the state layout.

The file holds minari's keys (dataset id, totals, spaces, env spec) and trajebm's own under
``"trajebm"`` (env id, state names, velocities, time step, policy, seeds, versions, for a
shard its block of episodes, and for a collection with hidden physics its ranges under
``hidden_physics``). :class:`DatasetInfo` is what readers use: ``read_info(path)``,
``TrajectoryDataset(path).info``. This module is also the one place that writes and edits the
JSON document (collection, synthetic data, merged shards), so its layout is defined here.
Datasets written by every earlier trajebm read unchanged.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trajebm.data import storage
from trajebm.data.randomize import hidden_metadata
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import git_commit, jsonable, package_versions

if TYPE_CHECKING:
    from trajebm.data.collection import CollectConfig

OWN = "trajebm"
"""The key of trajebm's own entry in the metadata document."""
FORMAT_VERSION = 1
"""The version of trajebm's entry (unchanged since the first datasets)."""
SHARD_FIELDS = ("dataset_id", "total_episodes", "total_steps", "dataset_size")
"""Minari keys that differ between the shards of one collection."""
SHARD_OWN_FIELDS = ("shard", "git_commit", "format")
"""trajebm keys that differ between the shards of one collection (or between runs)."""


@dataclass(frozen=True)
class ShardInfo:
    """Which block of a collection a shard holds: shard ``index`` of ``count``, episode ids
    ``first`` to ``stop - 1``."""

    index: int
    count: int
    first: int
    stop: int


@dataclass(frozen=True)
class DatasetInfo:
    """The metadata of a trajebm dataset (or collection shard), typed.

    ``dt`` and ``n_substeps`` are None for synthetic datasets (no simulator); ``shard`` is
    None except for a shard of a collection. ``document`` is the JSON document it was read
    from, for keys not listed here.
    """

    dataset_id: str
    """Minari dataset id, ``(namespace/)name-vN``."""
    env_id: str
    """The gymnasium env the data came from (``synthetic`` for synthetic data)."""
    state_names: tuple[str, ...]
    """The name of each state dimension (``robot0:FFJ2``, ``object:z``, ...)."""
    state_dim: int
    action_dim: int
    include_velocities: bool
    """Whether the state holds joint and object velocities after the positions."""
    total_episodes: int
    """Episodes in this file (a shard's block; the whole collection otherwise)."""
    total_steps: int
    """Actions in this file, summed over its episodes."""
    episodes: int
    """Episodes of the collection (all shards together)."""
    length: int
    """Steps per collected episode."""
    seed: int
    policy: Mapping[str, Any]
    """The collection policy's settings (``name``, ``random_every``, ...)."""
    format: str
    minari_version: str
    collection: Mapping[str, Any]
    """The collection settings and simulator versions (what ``--resume`` must match)."""
    versions: Mapping[str, str]
    """Package versions of the collecting environment."""
    git_commit: str | None
    dt: float | None = None
    """Seconds per step (per action) in the env."""
    n_substeps: int | None = None
    shard: ShardInfo | None = None
    randomize: Mapping[str, tuple[float, float]] | None = None
    """Hidden physics: each randomised parameter's factor range (low, high), drawn per episode
    (log-uniform); None for nominal physics."""
    actuation_noise: float | None = None
    """Std of the hidden noise on executed actions; None if there was none."""
    document: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, document: Mapping[str, Any], where: str | os.PathLike = "dataset"
                  ) -> DatasetInfo:
        """The info of a metadata document; UsageError naming ``where`` if a key is missing."""
        own = document.get(OWN) if isinstance(document, Mapping) else None
        if not isinstance(own, Mapping):
            raise UsageError(f"{where} is not a trajebm dataset (no {OWN!r} metadata)")

        def need(entry: Mapping[str, Any], key: str, prefix: str = "") -> Any:
            if key not in entry:
                raise UsageError(f"{where}: metadata.json has no {prefix + key!r}")
            return entry[key]

        shard = own.get("shard")
        hidden = own.get("hidden_physics") or {}
        return cls(
            dataset_id=need(document, "dataset_id"), env_id=need(own, "env_id", "trajebm."),
            state_names=tuple(need(own, "state_names", "trajebm.")),
            state_dim=int(need(own, "state_dim", "trajebm.")),
            action_dim=int(need(own, "action_dim", "trajebm.")),
            include_velocities=bool(own.get("include_velocities", False)),
            total_episodes=int(need(document, "total_episodes")),
            total_steps=int(need(document, "total_steps")),
            episodes=int(need(own, "episodes", "trajebm.")),
            length=int(need(own, "length", "trajebm.")), seed=int(need(own, "seed", "trajebm.")),
            policy=dict(own.get("policy") or {}), format=need(own, "format", "trajebm."),
            minari_version=str(document.get("minari_version", "")),
            collection=dict(own.get("collection") or {}),
            versions=dict(own.get("versions") or {}), git_commit=own.get("git_commit"),
            dt=own.get("dt"), n_substeps=own.get("n_substeps"),
            shard=ShardInfo(**shard) if isinstance(shard, Mapping) else None,
            randomize={k: tuple(v) for k, v in (hidden.get("randomize") or {}).items()} or None,
            actuation_noise=hidden.get("actuation_noise") or None, document=document)

    @property
    def simulator_versions(self) -> dict[str, str]:
        """The versions of the simulator packages the collection ran with."""
        return dict(self.collection.get("versions") or {})


def read_info(root: str | os.PathLike) -> tuple[Path, DatasetInfo]:
    """The data folder and :class:`DatasetInfo` of the dataset at ``root`` (DIR or DIR/data)."""
    data_dir, document = storage.read_metadata(root)
    return data_dir, DatasetInfo.from_json(document, root)


def recorded_collection(document: Any) -> Any:
    """The collection settings a metadata document records (None if it records none)."""
    own = document.get(OWN) if isinstance(document, Mapping) else None
    return own.get("collection") if isinstance(own, Mapping) else None


def collection_document(cfg: CollectConfig, env: Any, manifest: dict[str, Any],
                        dataset_id: str, ids: range, shard: tuple[int, int] | None,
                        dataset_size: float) -> dict[str, Any]:
    """The metadata document of a collection (or shard) of ``cfg`` from ``env``: minari's
    keys, then our provenance and state layout (key order fixed, so equal collections write
    byte-identical files). ``dataset_size`` is the data file's size in MB."""
    low, high = env.action_space.low, env.action_space.high
    obs = env.observation_space
    simulator = "mujoco.batch closed loop" if cfg.policy.closed_loop else "mujoco.rollout"
    doc = {
        "dataset_id": dataset_id,
        "minari_version": storage.MINARI_FORMAT_VERSION,
        "total_episodes": len(ids),
        "total_steps": len(ids) * cfg.length,
        "data_format": "hdf5",
        "jpeg_encoding": False,
        "observation_space": storage.serialize_box(obs.low, obs.high, str(obs.dtype)),
        "action_space": storage.serialize_box(low, high, str(env.action_space.dtype)),
        "env_spec": env.spec.to_json(),
        "dataset_size": dataset_size,
        "algorithm_name": f"trajebm collect ({cfg.policy.name} policy)",
        "description": "Shadow-hand trajectories; observations are the trajebm state vector.",
        "requirements": ["trajebm"],
        OWN: {
            "format": storage.FORMAT_NAME if shard is None else storage.SHARD_FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "env_id": cfg.env_id,
            "state_dim": env.layout.dim,
            "action_dim": int(env.action_space.shape[0]),
            "state_names": list(env.layout.names),
            "include_velocities": cfg.include_velocities,
            "n_substeps": env.n_substeps,
            "dt": env.dt,
            "policy": jsonable(cfg.policy),
            "seed": cfg.seed,
            "episodes": cfg.episodes,
            "length": cfg.length,
            "simulator": f"{simulator} from env.reset(seed) states",
            "collection": manifest,
            "versions": package_versions(),
            "git_commit": git_commit(),
        },
    }
    if cfg.randomize or cfg.actuation_noise:
        doc[OWN]["hidden_physics"] = hidden_metadata(cfg.randomize, cfg.actuation_noise)
    if shard is not None:
        doc[OWN]["shard"] = {"index": shard[0], "count": shard[1], "first": ids.start,
                             "stop": ids.stop}
    return doc


def synthetic_document(dataset_id: str, env_id: str, episodes: int, length: int,
                       state_dim: int, action_dim: int, seed: int) -> dict[str, Any]:
    """The metadata document of synthetic random walks (no env, no policy, no simulator)."""
    box = storage.serialize_box
    return {
        "dataset_id": dataset_id,
        "minari_version": storage.MINARI_FORMAT_VERSION,
        "total_episodes": episodes,
        "total_steps": episodes * length,
        "data_format": "hdf5",
        "observation_space": box(np.full(state_dim, -np.inf), np.full(state_dim, np.inf),
                                 "float64"),
        "action_space": box(-np.ones(action_dim), np.ones(action_dim), "float32"),
        "env_spec": None,
        "algorithm_name": "trajebm synthetic random walks",
        OWN: {
            "format": storage.FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "env_id": env_id,
            "state_dim": state_dim,
            "action_dim": action_dim,
            "state_names": [f"synthetic:{i}" for i in range(state_dim)],
            "include_velocities": False,
            "policy": {"name": "synthetic"},
            "seed": seed,
            "episodes": episodes,
            "length": length,
            "collection": {"config": None, "versions": package_versions(("numpy", "h5py"))},
            "versions": package_versions(),
            "git_commit": git_commit(),
        },
    }


def shard_settings(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A shard's metadata without what differs between the shards of one collection."""
    same = {k: v for k, v in doc.items() if k not in SHARD_FIELDS}
    own = {k: v for k, v in doc[OWN].items() if k not in SHARD_OWN_FIELDS}
    own["collection"] = {k: v for k, v in own.get("collection", {}).items() if k != "shard"}
    return {**same, OWN: own}


def settings_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The (dotted) keys whose values differ between two :func:`shard_settings`."""
    keys = sorted({*a, *b} - {OWN})
    keys += [f"{OWN}.{k}" for k in sorted({*a[OWN], *b[OWN]})]
    return [k for k in keys if _lookup(a, k) != _lookup(b, k)]


def _lookup(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        doc = doc.get(part) if isinstance(doc, Mapping) else None
    return doc


def merged_document(first_shard: Mapping[str, Any], dataset_id: str, dataset_size: float
                    ) -> dict[str, Any]:
    """The metadata of the dataset joined from all shards, given the first shard's."""
    merged = copy.deepcopy(dict(first_shard))
    own = merged[OWN]
    del own["shard"], own["collection"]["shard"]
    own["format"] = storage.FORMAT_NAME
    merged["dataset_id"] = dataset_id
    merged["total_episodes"] = own["episodes"]
    merged["total_steps"] = own["episodes"] * own["length"]
    merged["dataset_size"] = dataset_size
    return merged
