"""The consolidated read cache: every episode of a dataset in two flat float32 arrays.

Reading 200,000 HDF5 episode groups takes a Python loop over the file; training then needs
random windows from all of them. So the first reader writes, beside the dataset (``DIR/
.trajebm-cache/``, outside ``DIR/data`` so minari reads the dataset unchanged), the states of
all episodes one after another as one (sum of T_i + 1, D) float32 array, the actions as one
(sum of T_i, A) array, the episode offsets, and each episode's mean and centred sum of squares
(float64, from the stored values) so any split's z-score statistics are exact without a pass
over the data. Later readers memory-map the arrays: nothing is loaded until a window is
gathered, and the ranks of one machine share the pages. The cache is keyed on the dataset's
file (size, mtime, inode) and metadata bytes and rebuilt when either changes; builds happen
under a file lock (readers check the key under it too), in a temporary folder renamed into
place. A current cache in a read-only folder is used as it is; without one (or without the
disk space) the arrays are read into memory instead, with a warning. A rebuild removes files
that processes on other machines may still have mapped: on a shared file system, do not
change a dataset while it is being trained on.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm.auto import tqdm

from trajebm.data import storage
from trajebm.data.metadata import DatasetInfo, read_info
from trajebm.engine.errors import UsageError

CACHE_DIR = ".trajebm-cache"
CACHE_VERSION = 1
MakeArray = Callable[[str, tuple[int, ...], Any], np.ndarray]
"""``make(name, shape, dtype)``: the array an episode field is read into (memmap or memory)."""
_ARRAYS = ("states", "actions", "state_start", "state_mean", "state_m2", "action_mean",
           "action_m2")


@dataclass(frozen=True)
class EpisodeArrays:
    """All episodes as flat arrays: episode i's states are ``states[state_start[i]:
    state_start[i + 1]]`` and its actions ``actions[action_start[i]:action_start[i + 1]]``.

    ``*_mean`` and ``*_m2`` are per-episode means and centred sums of squares (float64), the
    moments :meth:`moments` combines for any set of episodes.
    """

    states: np.ndarray
    actions: np.ndarray
    state_start: np.ndarray
    state_mean: np.ndarray
    state_m2: np.ndarray
    action_mean: np.ndarray
    action_m2: np.ndarray

    @property
    def num_episodes(self) -> int:
        """Episodes in the dataset."""
        return len(self.state_start) - 1

    @property
    def action_start(self) -> np.ndarray:
        """Episode i has one action fewer than states, so its actions start i rows earlier."""
        return self.state_start - np.arange(len(self.state_start))

    @property
    def lengths(self) -> np.ndarray:
        """Steps T_i (actions) of every episode."""
        return np.diff(self.state_start) - 1

    def moments(self, ids: np.ndarray, kind: str = "state") -> tuple[int, np.ndarray, np.ndarray]:
        """(count, mean, centred sum of squares) of the rows of episodes ``ids`` (Chan et al.)."""
        mean_i, m2_i = getattr(self, f"{kind}_mean")[ids], getattr(self, f"{kind}_m2")[ids]
        n_i = self.lengths[ids] + (1 if kind == "state" else 0)
        count = int(n_i.sum())
        mean = (n_i[:, None] * mean_i).sum(0) / count
        m2 = m2_i.sum(0) + (n_i[:, None] * (mean_i - mean) ** 2).sum(0)
        return count, mean, m2


def _key(data_dir: Path) -> dict[str, Any]:
    """What identifies the dataset's content: the data file's stat and the metadata's bytes."""
    stat = (data_dir / storage.MAIN_FILE).stat()
    meta = (data_dir / storage.METADATA_FILE).read_bytes()
    return {"version": CACHE_VERSION, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "inode": stat.st_ino, "metadata_sha256": hashlib.sha256(meta).hexdigest()}


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    return mean, ((x - mean) ** 2).sum(0)


def _read(fid: h5py.h5f.FileID, path: str) -> np.ndarray:
    """One dataset of the file, through h5py's low-level API (3x faster per small dataset)."""
    dset = h5py.h5d.open(fid, path.encode())
    out = np.empty(dset.shape, dset.dtype)
    dset.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
    return out


def _fill(root: Path, data_dir: Path, info: DatasetInfo, make: MakeArray,
          progress: bool) -> dict[str, Any]:
    """Read every episode once into arrays from ``make(name, shape, dtype)``, sized by the
    metadata's totals; check each episode's shapes and values on the way."""
    dim, action_dim = info.state_dim, info.action_dim
    n, steps = info.total_episodes, info.total_steps
    out = {"states": make("states", (steps + n, dim), np.float32),
           "actions": make("actions", (steps, action_dim), np.float32),
           "state_start": np.zeros(n + 1, dtype=np.int64)}
    for kind, d in (("state", dim), ("action", action_dim)):
        out[f"{kind}_mean"] = np.zeros((n, d))
        out[f"{kind}_m2"] = np.zeros((n, d))
    start = out["state_start"]
    try:
        with h5py.File(data_dir / storage.MAIN_FILE, "r") as file:
            bar = tqdm(range(n), desc="cache episodes", unit="ep", mininterval=2.0,
                       disable=None if progress else True)  # None: no bar in a log file
            for i in bar:
                try:
                    obs = _read(file.id, f"episode_{i}/observations")
                    act = _read(file.id, f"episode_{i}/actions")
                except KeyError:
                    raise UsageError(f"{root}: episode_{i} is missing from "
                                     f"{storage.MAIN_FILE}") from None
                if obs.ndim != 2 or obs.shape[1] != dim or act.shape != (len(obs) - 1,
                                                                          action_dim):
                    raise UsageError(f"{root}: episode_{i} has observations {obs.shape} and "
                                     f"actions {act.shape}; expected (T+1, {dim}) and "
                                     f"(T, {action_dim})")
                if not (np.isfinite(obs).all() and np.isfinite(act).all()):
                    raise UsageError(f"{root}: episode_{i} contains NaN or inf values")
                start[i + 1] = start[i] + len(obs)
                if start[i + 1] - (i + 1) > steps:
                    raise UsageError(f"{root}: episodes 0-{i} already hold more than the "
                                     f"metadata's total_steps = {steps}")
                out["states"][start[i] : start[i + 1]] = obs
                out["actions"][start[i] - i : start[i + 1] - i - 1] = act
                out["state_mean"][i], out["state_m2"][i] = _moments(obs.astype(np.float64))
                out["action_mean"][i], out["action_m2"][i] = _moments(act.astype(np.float64))
    except OSError as err:
        raise UsageError(f"{root}: cannot read {storage.MAIN_FILE}: {err}") from None
    if start[-1] != steps + n:
        raise UsageError(f"{root}: the episodes hold {int(start[-1]) - n} steps in all but the "
                         f"metadata says total_steps = {steps}")
    return out


def _build(root: Path, data_dir: Path, info: DatasetInfo, folder: Path,
           key: dict[str, Any], progress: bool) -> None:
    """Write the cache into ``folder`` via a temporary sibling folder and a rename (under the
    lock, so no reader is between the removal of a stale cache and the rename)."""
    for stale in folder.parent.glob(".build-*"):  # left by a build that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".build-"))
    try:
        def make(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            return np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", dtype, shape)

        arrays = _fill(root, data_dir, info, make, progress)
        for name in _ARRAYS:
            value = arrays[name]
            if isinstance(value, np.memmap):
                value.flush()
            else:
                np.save(tmp / f"{name}.npy", value)
        (tmp / "key.json").write_text(json.dumps(key))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open(folder: Path) -> EpisodeArrays:
    return EpisodeArrays(**{name: np.load(folder / f"{name}.npy", mmap_mode="r")
                            for name in _ARRAYS})


def _current(folder: Path, key: dict[str, Any]) -> bool:
    try:
        return json.loads((folder / "key.json").read_text()) == key
    except (OSError, ValueError):
        return False


def cache_bytes(info: DatasetInfo) -> int:
    """The size of the cache of a dataset: float32 states and actions, float64 moments."""
    n, steps, dim, action_dim = (info.total_episodes, info.total_steps, info.state_dim,
                                 info.action_dim)
    return 4 * ((steps + n) * dim + steps * action_dim) + 16 * n * (dim + action_dim) + 8 * n


def episode_arrays(root: str | os.PathLike, progress: bool = True
                   ) -> tuple[DatasetInfo, EpisodeArrays]:
    """:class:`DatasetInfo` and :class:`EpisodeArrays` of the dataset at ``root`` (DIR or
    DIR/data).

    Memory-mapped from the cache beside the dataset, built first if missing or stale. A
    current cache in a folder this process cannot write (a read-only share) is still used.
    """
    data_dir, info = read_info(root)
    key = _key(data_dir)
    cache = data_dir.parent / CACHE_DIR
    folder = cache / "current"
    try:
        cache.mkdir(exist_ok=True)
        lock = open(cache / "lock", "a")
    except OSError as err:
        if _current(folder, key):
            return info, _open(folder)
        return info, _in_memory(root, data_dir, info, progress,
                                f"cannot write in {cache}: {err.strerror}")
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _current(folder, key):
            return info, _open(folder)
        need = cache_bytes(info)
        if shutil.disk_usage(cache).free < 1.1 * need:
            return info, _in_memory(root, data_dir, info, progress,
                                    f"{cache} has not the {need / 1e9:.1f} GB free")
        _build(Path(root), data_dir, info, folder, key, progress)
        return info, _open(folder)


def _in_memory(root: str | os.PathLike, data_dir: Path, info: DatasetInfo,
               progress: bool, why: str) -> EpisodeArrays:
    warnings.warn(f"no read cache ({why}); reading the dataset into memory", stacklevel=3)
    arrays = _fill(Path(root), data_dir, info,
                   lambda _, shape, dtype: np.empty(shape, dtype), progress)
    return EpisodeArrays(**{name: arrays[name] for name in _ARRAYS})
