"""Collect Shadow-hand trajectories with MuJoCo's multi-threaded rollout into a Minari dataset.

Each episode starts from the env's own ``reset(seed)`` (run in parallel, one env per
worker thread) and its open-loop actions are mapped to ``ctrl`` up front and simulated by
``mujoco.rollout`` on all workers; the result equals stepping the gymnasium env (tested).
Work proceeds in chunks of episodes; each finished chunk is written durably to
``DIR/.partial/`` so an interrupted run resumes where it stopped with the same per-episode
seeds. At the end the chunks are merged into ``DIR/data/main_data.hdf5`` (temp + rename),
``metadata.json`` is written, and ``.partial/`` is removed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from trajebm.data import storage
from trajebm.data.policies import POLICIES, PolicyConfig, policy_actions
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import git_commit, jsonable, package_versions, write_json

PARTIAL_DIR = ".partial"
MANIFEST = "collect.json"
DEFAULT_ENV = "trajebm/ShadowHandBlock-v0"


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
    if cfg.policy.name not in POLICIES:
        raise UsageError(
            f"unknown policy {cfg.policy.name!r}; choose from {', '.join(sorted(POLICIES))}"
        )
    for name in ("episodes", "length", "chunk_episodes"):
        if getattr(cfg, name) <= 0:
            raise UsageError(f"{name} must be positive, got {getattr(cfg, name)}")
    if cfg.policy.random_every < 0:
        raise UsageError(f"random_every must be >= 0, got {cfg.policy.random_every}")


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
        for seed in seeds:
            env.reset(seed=seed)
            state = np.empty(self.nstate)
            self._mujoco.mj_getState(self.model, env.data, state, self.spec)
            out.append((state, env.data.qacc_warmstart.copy(), env.goal))
        return out

    def reset_states(self, seeds: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full physics states, solver warm-starts and goals right after ``env.reset(seed)``."""
        groups = [seeds[i :: self.workers] for i in range(self.workers)]
        results = list(self._threads.map(self._reset_group, self.envs, groups))
        ordered = [results[i % self.workers][i // self.workers] for i in range(len(seeds))]
        return tuple(np.stack(parts) for parts in zip(*ordered, strict=True))

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

    def episodes(self, cfg: CollectConfig, ids: range) -> list[storage.Episode]:
        """Episodes ``ids`` of the collection ``cfg``, simulated as one batch."""
        seeds, rngs = zip(*(episode_seeds(cfg.seed, i) for i in ids), strict=True)
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


def _manifest(cfg: CollectConfig) -> dict[str, Any]:
    versions = package_versions(("mujoco", "gymnasium", "gymnasium-robotics"))
    return {"config": jsonable(cfg), "versions": versions}


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


def _metadata(cfg: CollectConfig, out: Path, env, manifest: dict[str, Any],
              dataset_id: str) -> dict[str, Any]:
    """minari's metadata keys, plus our provenance and state layout under ``"trajebm"``."""
    spec = env.spec
    size = (out / "data" / storage.MAIN_FILE).stat().st_size
    low, high = env.action_space.low, env.action_space.high
    obs = env.observation_space
    return {
        "dataset_id": dataset_id,
        "minari_version": storage.MINARI_FORMAT_VERSION,
        "total_episodes": cfg.episodes,
        "total_steps": cfg.episodes * cfg.length,
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
            "format": storage.FORMAT_NAME,
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
            "simulator": "mujoco.rollout from env.reset(seed) states",
            "collection": manifest,
            "versions": package_versions(),
            "git_commit": git_commit(),
        },
    }


def collect(cfg: CollectConfig, out: str | os.PathLike, workers: int | None = None,
            resume: bool = False, overwrite: bool = False, dataset_id: str | None = None,
            progress: bool = True) -> Path:
    """Collect the dataset ``cfg`` into folder ``out`` (Minari layout) and return ``out/data``."""
    check_config(cfg)
    if resume and overwrite:
        raise UsageError("choose one of --resume and --overwrite")
    workers = workers or os.cpu_count() or 1
    if workers <= 0:
        raise UsageError(f"workers must be positive, got {workers}")
    out = Path(out)
    dataset_id = dataset_id or storage.default_dataset_id(out)
    if not storage.DATASET_ID_RE.match(dataset_id):
        raise UsageError(f"invalid dataset id {dataset_id!r}; use (namespace/)name-vN")
    manifest = _manifest(cfg)
    if not _prepare_output(out, manifest, resume, overwrite):
        return out / "data"
    partial = out / PARTIAL_DIR
    partial.mkdir(parents=True, exist_ok=True)
    write_json(partial / MANIFEST, manifest)

    n_chunks = math.ceil(cfg.episodes / cfg.chunk_episodes)
    chunks = [partial / f"chunk_{k:06d}.hdf5" for k in range(n_chunks)]
    todo = [k for k in range(n_chunks) if not chunks[k].exists()]
    done = cfg.episodes - sum(len(_chunk_ids(cfg, k)) for k in todo)
    with RolloutCollector(cfg.env_id, cfg.include_velocities, workers) as collector, tqdm(
        total=cfg.episodes, initial=done, unit="ep", desc="collect", disable=not progress
    ) as bar:
        for k in todo:
            ids = _chunk_ids(cfg, k)
            storage.write_episodes(chunks[k], collector.episodes(cfg, ids))
            bar.update(len(ids))
        env = collector.env
        data_dir = out / "data"
        data_dir.mkdir(exist_ok=True)
        storage.merge_episode_files(chunks, data_dir / storage.MAIN_FILE)
        storage.write_metadata(data_dir, _metadata(cfg, out, env, manifest, dataset_id))
    write_json(out / "run.json", {"workers": workers, **_run_record(cfg)})
    shutil.rmtree(partial)
    return data_dir


def _chunk_ids(cfg: CollectConfig, k: int) -> range:
    return range(k * cfg.chunk_episodes, min(cfg.episodes, (k + 1) * cfg.chunk_episodes))


def _run_record(cfg: CollectConfig) -> dict[str, Any]:
    from trajebm.engine.runinfo import run_info

    return run_info(dataclasses.asdict(cfg), cfg.seed)
