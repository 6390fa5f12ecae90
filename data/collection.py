"""Collect Shadow-hand trajectories with MuJoCo's multi-threaded rollout into a Minari dataset.

Each episode starts from the env's own ``reset(seed)`` (run in parallel, one env per
worker thread). Open-loop actions are mapped to ``ctrl`` up front and simulated by
``mujoco.rollout`` on all workers. Closed-loop policies are called once per step on the
states of all episodes of a chunk, and the chunk's physics (the env's ``n_substeps`` per
action) is stepped by ``mujoco.batch.Batch`` on all workers from the full integration
states. Both equal stepping the gymnasium env (tested), whatever the number of workers.
Work proceeds in chunks of episodes; each finished chunk is written durably to
``DIR/.partial/`` so an interrupted run resumes where it stopped with the same per-episode
seeds. At the end the chunks are merged into ``DIR/data/main_data.hdf5`` (temp + rename),
``metadata.json`` is written, and ``.partial/`` is removed.

Sharding: ``collect(..., shard=(i, n))`` collects only the contiguous block
:func:`shard_ids` of episode ids, into a shard folder (metadata format
``trajebm-shadowhand-shard``). :func:`merge_shards` joins the n shards into the dataset an
unsharded run writes: the same ``main_data.hdf5`` bytes, and the same metadata except the
run-specific ``git_commit`` (the first shard's) and ``dataset_id`` (from the merge's output
folder, as ``collect`` derives it). Both hold when the policy treats episodes independently
(every built-in does; a ``module:function`` policy must act on each row alone).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from trajebm.data import storage
from trajebm.data.policies import (
    PolicyConfig,
    StatePolicy,
    check_actions,
    check_policy,
    draw_perturbations,
    perturb,
    policy_actions,
    resolve_policy,
)
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import git_commit, jsonable, package_versions, write_json

PARTIAL_DIR = ".partial"
MANIFEST = "collect.json"
DEFAULT_ENV = "trajebm/ShadowHandBlock-v0"
SHARD_RE = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class CollectConfig:
    """What to collect; equal configs (and mujoco versions) give identical episode data."""

    env_id: str = DEFAULT_ENV
    episodes: int = 100
    length: int = 100
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    seed: int = 0
    include_velocities: bool = False
    chunk_episodes: int = 32


def check_config(cfg: CollectConfig) -> None:
    """Raise :class:`UsageError` for a config that cannot be collected."""
    from trajebm.envs import ENV_IDS

    if cfg.env_id not in ENV_IDS:
        raise UsageError(f"unknown env {cfg.env_id!r}; choose from {', '.join(sorted(ENV_IDS))}")
    check_policy(cfg.policy)
    if cfg.policy.closed_loop and importlib.util.find_spec("mujoco.batch") is None:
        import mujoco

        raise UsageError(f"closed-loop policies need mujoco >= 4.0 (mujoco.batch); this is "
                         f"mujoco {mujoco.__version__}")
    for name in ("episodes", "length", "chunk_episodes"):
        if getattr(cfg, name) <= 0:
            raise UsageError(f"{name} must be positive, got {getattr(cfg, name)}")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` as (I, N); UsageError unless 0 <= I < N."""
    match = SHARD_RE.match(text.strip())
    if not match:
        raise UsageError(f"--shard must be I/N (e.g. 0/4), got {text!r}")
    index, count = int(match[1]), int(match[2])
    check_shard((index, count))
    return index, count


def check_shard(shard: tuple[int, int], episodes: int | None = None) -> None:
    """Raise :class:`UsageError` unless shard (I, N) has N >= 1, 0 <= I < N and N <= episodes."""
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"shard {index}/{count} is outside 0..N-1 (N = {count})")
    if episodes is not None and count > episodes:
        raise UsageError(f"cannot split {episodes} episodes into {count} shards")


def shard_ids(episodes: int, index: int, count: int) -> range:
    """The contiguous block of episode ids that shard ``index`` of ``count`` collects."""
    return range(index * episodes // count, (index + 1) * episodes // count)


def episode_seeds(seed: int, episode: int) -> tuple[int, np.random.Generator]:
    """The reset seed and the action generator of episode ``episode`` of a run seeded ``seed``."""
    reset_seed = int(np.random.SeedSequence(seed, spawn_key=(episode, 0)).generate_state(1)[0])
    return reset_seed, np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(episode, 1)))


class RolloutCollector:
    """Resets envs in parallel threads and simulates batches of episodes with mujoco.rollout."""

    def __init__(self, env_id: str, include_velocities: bool = False, workers: int = 1) -> None:
        import gymnasium as gym
        import mujoco
        from mujoco import rollout

        self._mujoco = mujoco
        self.envs = [
            gym.make(env_id, include_velocities=include_velocities).unwrapped
            for _ in range(workers)
        ]
        self.env = self.envs[0]
        self.model = self.env.model
        self.workers = workers
        self.spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self.nstate = mujoco.mj_stateSize(self.model, self.spec)
        self.qpos_at = mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_TIME)
        self.qvel_at = self.qpos_at + self.model.nq
        self._threads = ThreadPoolExecutor(workers)
        self._rollout = rollout.Rollout(nthread=workers)
        self._datas = [mujoco.MjData(self.model) for _ in range(workers)]
        self._policies: dict[str, StatePolicy] = {}

    def close(self) -> None:
        self._rollout.close()
        self._threads.shutdown()
        for env in self.envs:
            env.close()

    def __enter__(self) -> RolloutCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reset_group(self, env, seeds: list[int]) -> list[tuple[np.ndarray, ...]]:
        out = []
        integration = self._mujoco.mjtState.mjSTATE_INTEGRATION
        for seed in seeds:
            env.reset(seed=seed)
            state = np.empty(self.nstate)
            self._mujoco.mj_getState(self.model, env.data, state, self.spec)
            full = np.empty(self._mujoco.mj_stateSize(self.model, integration))
            self._mujoco.mj_getState(self.model, env.data, full, integration)
            out.append((state, env.data.qacc_warmstart.copy(), env.goal, full))
        return out

    def _reset_all(self, seeds: list[int]) -> tuple[np.ndarray, ...]:
        groups = [seeds[i :: self.workers] for i in range(self.workers)]
        results = list(self._threads.map(self._reset_group, self.envs, groups))
        ordered = [results[i % self.workers][i // self.workers] for i in range(len(seeds))]
        return tuple(np.stack(parts) for parts in zip(*ordered, strict=True))

    def reset_states(self, seeds: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full physics states, solver warm-starts and goals right after ``env.reset(seed)``."""
        return self._reset_all(seeds)[:3]

    def reset_integration_states(self, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """mjSTATE_INTEGRATION states (all ``mj_step`` depends on) and goals after reset."""
        parts = self._reset_all(seeds)
        return parts[3], parts[2]

    def simulate(self, initial: np.ndarray, warmstart: np.ndarray,
                 actions: np.ndarray) -> np.ndarray:
        """States (B, T+1, D) from full ``initial`` states under ``actions`` (B, T, A)."""
        from trajebm.envs import control_from_action

        nsub = self.env.n_substeps
        ctrl = np.repeat(control_from_action(self.model, actions), nsub, axis=1)
        full, _ = self._rollout.rollout(
            self.model, self._datas, initial, ctrl, initial_warmstart=warmstart
        )
        full = np.concatenate([initial[:, None], full[:, nsub - 1 :: nsub]], axis=1)
        qpos = full[..., self.qpos_at : self.qpos_at + self.model.nq]
        qvel = full[..., self.qvel_at : self.qvel_at + self.model.nv]
        return self.env.layout.state_from_qpos_qvel(qpos, qvel)

    def simulate_closed_loop(self, initial: np.ndarray, policy: StatePolicy,
                             replace: np.ndarray, noise: np.ndarray | None,
                             name: str = "policy") -> tuple[np.ndarray, np.ndarray]:
        """States (B, T+1, D) and actions (B, T, A) of ``policy`` from integration states.

        ``replace`` (B, T, A; NaN where none) and ``noise`` (B, T, A or None) are the
        episodes' random replacements and action noise (see :func:`draw_perturbations`).
        """
        from mujoco.batch import Batch

        from trajebm.envs import control_from_action

        n, length = replace.shape[:2]
        batch = Batch(self.model, n, nthread=self.workers)
        batch.state[:] = initial
        qpos, qvel, ctrl = batch.bind("qpos"), batch.bind("qvel"), batch.bind("ctrl")
        layout = self.env.layout
        states = np.empty((n, length + 1, layout.dim))
        actions = np.empty((n, length, replace.shape[2]), dtype=np.float32)
        states[:, 0] = layout.state_from_qpos_qvel(qpos, qvel)
        for t in range(length):
            try:
                proposed = policy(states[:, t].copy(), t)
            except Exception as err:  # noqa: BLE001 - a user policy may raise anything
                raise UsageError(f"policy {name!r} raised {type(err).__name__} at step {t}: "
                                 f"{err}") from err
            raw = check_actions(proposed, n, t, name)
            step_noise = None if noise is None else noise[:, t]
            actions[:, t] = perturb(raw, replace[:, t], step_noise)
            ctrl[:] = control_from_action(self.model, actions[:, t])
            batch.step(nstep=self.env.n_substeps)
            states[:, t + 1] = layout.state_from_qpos_qvel(qpos, qvel)
        return states, actions

    def state_policy(self, cfg: PolicyConfig, rngs: list[np.random.Generator]) -> StatePolicy:
        """The closed-loop policy of ``cfg`` for episodes with generators ``rngs``."""
        from trajebm.data.controllers import CONTROLLERS

        if cfg.name in CONTROLLERS:
            return CONTROLLERS[cfg.name](self.model, self.env.layout, cfg, rngs)
        if cfg.name not in self._policies:
            self._policies[cfg.name] = resolve_policy(cfg.name)
        return self._policies[cfg.name]

    def episodes(self, cfg: CollectConfig, ids: range) -> list[storage.Episode]:
        """Episodes ``ids`` of the collection ``cfg``, simulated as one batch."""
        seeds, rngs = zip(*(episode_seeds(cfg.seed, i) for i in ids), strict=True)
        if cfg.policy.closed_loop:
            initial, goals = self.reset_integration_states(list(seeds))
            policy = self.state_policy(cfg.policy, list(rngs))
            drawn = [draw_perturbations(cfg.policy, cfg.length, rng) for rng in rngs]
            replace = np.stack([r for r, _ in drawn])
            noise = None if drawn[0][1] is None else np.stack([z for _, z in drawn])
            states, actions = self.simulate_closed_loop(initial, policy, replace, noise,
                                                        cfg.policy.name)
        else:
            initial, warmstart, goals = self.reset_states(list(seeds))
            actions = np.stack([policy_actions(cfg.policy, cfg.length, rng) for rng in rngs])
            states = self.simulate(initial, warmstart, actions)
        return [
            storage.Episode(
                id=i, seed=seeds[j], observations=states[j], actions=actions[j],
                rewards=self.env.reward(states[j, 1:], goals[j]), goal=goals[j],
            )
            for j, i in enumerate(ids)
        ]


def _manifest(cfg: CollectConfig, shard: tuple[int, int] | None = None) -> dict[str, Any]:
    versions = package_versions(("mujoco", "gymnasium", "gymnasium-robotics"))
    manifest = {"config": jsonable(cfg), "versions": versions}
    if shard is not None:
        manifest["shard"] = list(shard)
    return manifest


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{path} is unreadable ({err}); use --overwrite") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path} is not a JSON object; use --overwrite")
    return value


def _prepare_output(out: Path, manifest: dict[str, Any], resume: bool, overwrite: bool) -> bool:
    """Make ``out`` ready for collection; False when ``--resume`` finds the job already done."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    data_dir, partial = out / "data", out / PARTIAL_DIR
    finished = (data_dir / storage.METADATA_FILE).is_file()
    ours = finished or (partial / MANIFEST).is_file()
    if out.exists() and any(out.iterdir()) and not ours:
        raise UsageError(f"{out} exists and is not a trajebm dataset; refusing to write into it")
    if ours and overwrite:
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
        (out / "run.json").unlink(missing_ok=True)
        return True
    if ours and not resume:
        raise UsageError(
            f"{out} already exists; pass --resume to finish it or --overwrite to replace it"
        )
    if finished:
        previous = _read_json(data_dir / storage.METADATA_FILE).get("trajebm", {}).get("collection")
        if previous != manifest:
            raise UsageError(f"{out} holds a finished dataset with other settings; use --overwrite")
        shutil.rmtree(partial, ignore_errors=True)
        return False
    if (partial / MANIFEST).is_file():
        if _read_json(partial / MANIFEST) != manifest:
            raise UsageError(
                f"{out} holds an interrupted collection with other settings or versions "
                "(see .partial/collect.json); use --overwrite or the same options"
            )
    return True


def _metadata(cfg: CollectConfig, out: Path, env, manifest: dict[str, Any], dataset_id: str,
              ids: range, shard: tuple[int, int] | None) -> dict[str, Any]:
    """minari's metadata keys, plus our provenance and state layout under ``"trajebm"``."""
    spec = env.spec
    size = (out / "data" / storage.MAIN_FILE).stat().st_size
    low, high = env.action_space.low, env.action_space.high
    obs = env.observation_space
    simulator = "mujoco.batch closed loop" if cfg.policy.closed_loop else "mujoco.rollout"
    metadata = {
        "dataset_id": dataset_id,
        "minari_version": storage.MINARI_FORMAT_VERSION,
        "total_episodes": len(ids),
        "total_steps": len(ids) * cfg.length,
        "data_format": "hdf5",
        "jpeg_encoding": False,
        "observation_space": storage.serialize_box(obs.low, obs.high, str(obs.dtype)),
        "action_space": storage.serialize_box(low, high, str(env.action_space.dtype)),
        "env_spec": spec.to_json(),
        "dataset_size": round(size / 1e6, 3),
        "algorithm_name": f"trajebm collect ({cfg.policy.name} policy)",
        "description": "Shadow-hand trajectories; observations are the trajebm state vector.",
        "requirements": ["trajebm"],
        "trajebm": {
            "format": storage.FORMAT_NAME if shard is None else storage.SHARD_FORMAT_NAME,
            "format_version": 1,
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
    if shard is not None:
        metadata["trajebm"]["shard"] = {"index": shard[0], "count": shard[1],
                                        "first": ids.start, "stop": ids.stop}
    return metadata


def collect(cfg: CollectConfig, out: str | os.PathLike, workers: int | None = None,
            resume: bool = False, overwrite: bool = False, dataset_id: str | None = None,
            progress: bool = True, shard: tuple[int, int] | None = None) -> Path:
    """Collect the dataset ``cfg`` into folder ``out`` (Minari layout) and return ``out/data``.

    With ``shard=(i, n)`` only the block :func:`shard_ids` of episodes is collected, into a
    shard folder for :func:`merge_shards`. Bad input (including a closed-loop policy that
    returns actions of the wrong shape or NaN) raises :class:`UsageError` and leaves no
    output folder behind that this call created.
    """
    check_config(cfg)
    if shard is not None:
        check_shard(shard, cfg.episodes)
    if resume and overwrite:
        raise UsageError("choose one of --resume and --overwrite")
    workers = workers or os.cpu_count() or 1
    if workers <= 0:
        raise UsageError(f"workers must be positive, got {workers}")
    out = Path(out)
    dataset_id = dataset_id or storage.default_dataset_id(out)
    if not storage.DATASET_ID_RE.match(dataset_id):
        raise UsageError(f"invalid dataset id {dataset_id!r}; use (namespace/)name-vN")
    manifest = _manifest(cfg, shard)
    if not _prepare_output(out, manifest, resume, overwrite):
        return out / "data"
    partial = out / PARTIAL_DIR
    created = out if not out.exists() else None if partial.exists() else partial
    partial.mkdir(parents=True, exist_ok=True)
    try:
        return _collect_into(cfg, out, workers, dataset_id, progress, shard, manifest)
    except UsageError:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _collect_into(cfg: CollectConfig, out: Path, workers: int, dataset_id: str, progress: bool,
                  shard: tuple[int, int] | None, manifest: dict[str, Any]) -> Path:
    partial = out / PARTIAL_DIR
    write_json(partial / MANIFEST, manifest)
    ids = shard_ids(cfg.episodes, *shard) if shard is not None else range(cfg.episodes)
    n_chunks = math.ceil(len(ids) / cfg.chunk_episodes)
    chunks = [partial / f"chunk_{k:06d}.hdf5" for k in range(n_chunks)]
    todo = [k for k in range(n_chunks) if not chunks[k].exists()]
    done = len(ids) - sum(len(_chunk_ids(cfg, ids, k)) for k in todo)
    with RolloutCollector(cfg.env_id, cfg.include_velocities, workers) as collector, tqdm(
        total=len(ids), initial=done, unit="ep", desc="collect", disable=not progress
    ) as bar:
        for k in todo:
            chunk = _chunk_ids(cfg, ids, k)
            storage.write_episodes(chunks[k], collector.episodes(cfg, chunk))
            bar.update(len(chunk))
        env = collector.env
        data_dir = out / "data"
        data_dir.mkdir(exist_ok=True)
        storage.merge_episode_files(chunks, data_dir / storage.MAIN_FILE)
        storage.write_metadata(
            data_dir, _metadata(cfg, out, env, manifest, dataset_id, ids, shard)
        )
    write_json(out / "run.json", {"workers": workers, "shard": shard, **_run_record(cfg)})
    shutil.rmtree(partial)
    return data_dir


def _chunk_ids(cfg: CollectConfig, ids: range, k: int) -> range:
    return ids[k * cfg.chunk_episodes : (k + 1) * cfg.chunk_episodes]


def _run_record(cfg: CollectConfig) -> dict[str, Any]:
    from trajebm.engine.runinfo import run_info

    return run_info(dataclasses.asdict(cfg), cfg.seed)


# Metadata fields that differ between shards of one collection, or between runs.
_SHARD_FIELDS = ("dataset_id", "total_episodes", "total_steps", "dataset_size")
_SHARD_OWN_FIELDS = ("shard", "git_commit", "format")


def _shard_metadata(path: Path) -> dict[str, Any]:
    """The metadata of the finished shard folder ``path``; UsageError if it is not one."""
    meta_path = path / "data" / storage.METADATA_FILE
    if not path.is_dir():
        raise UsageError(f"shard {path} does not exist")
    if not meta_path.is_file() or not (path / "data" / storage.MAIN_FILE).is_file():
        if (path / PARTIAL_DIR / MANIFEST).is_file():
            raise UsageError(f"shard {path} is unfinished; finish it with `trajebm collect "
                             "--resume` and the same options")
        raise UsageError(f"{path} is not a collection shard (no data/{storage.METADATA_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{meta_path} is unreadable: {err}") from None
    own = meta.get("trajebm") if isinstance(meta, dict) else None
    if not isinstance(own, dict) or own.get("format") != storage.SHARD_FORMAT_NAME:
        raise UsageError(f"{path} is not a collection shard (collect it with --shard I/N)")
    return meta


def _settings(meta: dict[str, Any]) -> dict[str, Any]:
    """A shard's metadata without the fields that differ between shards of one collection."""
    same = {k: v for k, v in meta.items() if k not in _SHARD_FIELDS}
    own = {k: v for k, v in meta["trajebm"].items() if k not in _SHARD_OWN_FIELDS}
    own["collection"] = {k: v for k, v in own.get("collection", {}).items() if k != "shard"}
    return {**same, "trajebm": own}


def _check_shards(paths: list[Path], metas: list[dict[str, Any]]) -> list[int]:
    """The order that sorts the shards by index; UsageError unless they form one collection."""
    reference = _settings(metas[0])
    for path, meta in zip(paths, metas, strict=True):
        other = _settings(meta)
        if other != reference:
            keys = sorted({*reference, *other} - {"trajebm"})
            keys += [f"trajebm.{k}" for k in sorted({*reference["trajebm"], *other["trajebm"]})]
            differ = [k for k in keys if _lookup(reference, k) != _lookup(other, k)]
            raise UsageError(f"shards {paths[0]} and {path} differ in settings or versions "
                             f"({', '.join(differ)}); they are not one collection")
    counts = {meta["trajebm"]["shard"]["count"] for meta in metas}
    if len(counts) > 1:
        raise UsageError(f"shards were split different ways (N = {sorted(counts)})")
    count = counts.pop()
    seen: dict[int, Path] = {}
    for path, meta in zip(paths, metas, strict=True):
        index = meta["trajebm"]["shard"]["index"]
        if index in seen:
            raise UsageError(f"shard {index}/{count} is given twice ({seen[index]} and {path})")
        seen[index] = path
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise UsageError(f"missing shard(s) {', '.join(f'{i}/{count}' for i in missing)}")
    return sorted(range(len(metas)), key=lambda j: metas[j]["trajebm"]["shard"]["index"])


def _lookup(meta: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        meta = meta.get(part) if isinstance(meta, dict) else None
    return meta


def merge_shards(shards: Sequence[str | os.PathLike], out: str | os.PathLike,
                 dataset_id: str | None = None) -> Path:
    """Join the shard folders of one collection into the dataset ``out``; return ``out/data``.

    The result equals the unsharded collection (see the module docstring). Refuses shards
    of different settings or versions, missing, duplicate or unfinished shards, and an
    existing non-empty ``out``; it is built in a temporary sibling folder and renamed, so a
    failure leaves no output behind.
    """
    if not shards:
        raise UsageError("give the shard folders to merge")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists; merge into a new folder")
    dataset_id = dataset_id or storage.default_dataset_id(out)
    if not storage.DATASET_ID_RE.match(dataset_id):
        raise UsageError(f"invalid dataset id {dataset_id!r}; use (namespace/)name-vN")
    paths = [Path(p) for p in shards]
    metas = [_shard_metadata(p) for p in paths]
    order = _check_shards(paths, metas)
    paths, metas = [paths[j] for j in order], [metas[j] for j in order]
    for path, meta in zip(paths, metas, strict=True):
        own = meta["trajebm"]["shard"]
        try:
            with h5py.File(path / "data" / storage.MAIN_FILE, "r") as file:
                ids = sorted(int(group.attrs["id"]) for group in file.values())
        except (OSError, KeyError) as err:
            raise UsageError(f"shard {path}: cannot read {storage.MAIN_FILE} ({err})") from None
        if ids != list(range(own["first"], own["stop"])):
            raise UsageError(f"shard {path} does not hold episodes {own['first']}..{own['stop']}")
    tmp = out.with_name(f".{out.name}.merge-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        data_dir = tmp / "data"
        data_dir.mkdir(parents=True)
        storage.merge_episode_files([p / "data" / storage.MAIN_FILE for p in paths],
                                    data_dir / storage.MAIN_FILE)
        merged = copy.deepcopy(metas[0])
        own = merged["trajebm"]
        del own["shard"], own["collection"]["shard"]
        own["format"] = storage.FORMAT_NAME
        merged["dataset_id"] = dataset_id
        merged["total_episodes"] = own["episodes"]
        merged["total_steps"] = own["episodes"] * own["length"]
        merged["dataset_size"] = round((data_dir / storage.MAIN_FILE).stat().st_size / 1e6, 3)
        storage.write_metadata(data_dir, merged)
        write_json(tmp / "run.json", {"merged_from": [str(p.resolve()) for p in paths],
                                      "shard_git_commits": [m["trajebm"]["git_commit"]
                                                            for m in metas]})
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "data"
