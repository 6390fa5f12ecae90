"""Collect Shadow-hand trajectories with MuJoCo's multi-threaded rollout into a Minari dataset.

Each episode starts from the env's own ``reset(seed)`` (run in parallel, one env per
worker thread). Open-loop actions are mapped to ``ctrl`` up front and simulated by
``mujoco.rollout`` on all workers; closed-loop policies are called once per step on the
states of all episodes of a chunk, whose physics ``mujoco.batch`` steps on all workers
(:class:`trajebm.envs.Simulator` does both). Both equal stepping the gymnasium env (tested),
whatever the number of workers. Work proceeds in chunks of episodes; each finished chunk is
written durably to ``DIR/.partial/`` so an interrupted run resumes where it stopped with the
same per-episode seeds. At the end the chunks are merged into ``DIR/data/main_data.hdf5``
(temp + rename), ``metadata.json`` is written, and ``.partial/`` is removed. With ``shard=(i,
n)`` only one block of the episodes is collected (:mod:`trajebm.data.shards`). Hidden physics
(per-episode model factors, actuation noise) is :mod:`trajebm.data.randomize`'s.
"""

from __future__ import annotations

import dataclasses
import importlib.util
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
from trajebm.data.metadata import collection_document, recorded_collection
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
from trajebm.data.randomize import (
    FactorRange,
    actuate,
    check_actuation_noise,
    check_ranges,
    draw_hidden,
    randomized_model,
)
from trajebm.data.shards import check_shard, shard_ids
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import jsonable, package_versions, run_info, write_json

DEFAULT_ENV = "trajebm/ShadowHandBlock-v0"


@dataclass(frozen=True)
class CollectConfig:
    """What to collect; equal configs (and mujoco versions) give identical episode data."""

    env_id: str = DEFAULT_ENV
    """Registered env id."""
    episodes: int = 100
    """Number of trajectories N."""
    length: int = 100
    """Steps per trajectory T."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """The policy that chooses the actions."""
    seed: int = 0
    """Seed of the episodes' resets and actions (each episode has its own stream)."""
    include_velocities: bool = False
    """Include joint and object velocities in the state."""
    chunk_episodes: int = 32
    """Episodes per durable chunk (what an interrupted run loses at most)."""
    randomize: tuple[FactorRange, ...] = ()
    """Hidden physics: multiplicative factors on the model's own values, each drawn per
    episode, log-uniformly in its range (NAME=LO:HI,...), and recorded per episode, never in
    the state."""
    actuation_noise: float = 0.0
    """Std of hidden N(0, sigma^2) noise (action units) added to every executed action, then
    clipped to the control range; the dataset records the commanded action."""


HIDDEN_FIELDS = ("randomize", "actuation_noise")
"""Config fields a collection records only when set, so nominal collections record what
they did before these fields existed."""


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
    check_ranges(cfg.randomize)
    check_actuation_noise(cfg.actuation_noise)


def episode_seeds(seed: int, episode: int) -> tuple[int, np.random.Generator]:
    """The reset seed and the action generator of episode ``episode`` of a run seeded ``seed``."""
    reset_seed = int(np.random.SeedSequence(seed, spawn_key=(episode, 0)).generate_state(1)[0])
    return reset_seed, np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(episode, 1)))


class RolloutCollector:
    """Resets envs in parallel threads and simulates batches of episodes on all workers
    (:class:`trajebm.envs.Simulator`)."""

    def __init__(self, env_id: str, include_velocities: bool = False, workers: int = 1) -> None:
        import gymnasium as gym

        from trajebm.envs import Simulator

        self.envs = [
            gym.make(env_id, include_velocities=include_velocities).unwrapped
            for _ in range(workers)
        ]
        self.env = self.envs[0]
        self.model = self.env.model
        self.workers = workers
        self.simulator = Simulator(self.env, workers)
        self._threads = ThreadPoolExecutor(workers)
        self._policies: dict[str, StatePolicy] = {}

    def close(self) -> None:
        """Stop the worker threads and close the envs."""
        self.simulator.close()
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
            full, warmstart, integration = self.simulator.snapshot(env.data)
            out.append((full, warmstart, env.goal, integration))
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

    def simulate(self, initial: np.ndarray, warmstart: np.ndarray, actions: np.ndarray,
                 models: list[Any] | None = None) -> np.ndarray:
        """States (B, T+1, D) from full ``initial`` states under ``actions`` (B, T, A), each
        episode on its own model of ``models`` if given."""
        return self.simulator.rollout(initial, warmstart, actions, models)

    def simulate_closed_loop(self, initial: np.ndarray, policy: StatePolicy,
                             replace: np.ndarray, noise: np.ndarray | None,
                             name: str = "policy", models: list[Any] | None = None,
                             actuation: np.ndarray | None = None
                             ) -> tuple[np.ndarray, np.ndarray]:
        """States (B, T+1, D) and actions (B, T, A) of ``policy`` from integration states.

        ``replace`` (B, T, A; NaN where none) and ``noise`` (B, T, A or None) are the
        episodes' random replacements and action noise (see :func:`draw_perturbations`);
        ``models`` and ``actuation`` (B, T, A or None) their hidden physics, which the
        recorded actions do not include.
        """
        n, length = replace.shape[:2]
        actions = np.empty((n, length, replace.shape[2]), dtype=np.float32)

        def act(states: np.ndarray, t: int) -> np.ndarray:
            try:
                proposed = policy(states.copy(), t)
            except Exception as err:  # noqa: BLE001 - a user policy may raise anything
                raise UsageError(f"policy {name!r} raised {type(err).__name__} at step {t}: "
                                 f"{err}") from err
            raw = check_actions(proposed, n, t, name)
            actions[:, t] = perturb(raw, replace[:, t], None if noise is None else noise[:, t])
            return actuate(actions[:, t], None if actuation is None else actuation[:, t])

        return self.simulator.closed_loop(initial, length, act, models=models), actions

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
        factors, models, actuation = self.hidden_physics(cfg, ids)
        if cfg.policy.closed_loop:
            initial, goals = self.reset_integration_states(list(seeds))
            policy = self.state_policy(cfg.policy, list(rngs))
            drawn = [draw_perturbations(cfg.policy, cfg.length, rng) for rng in rngs]
            replace = np.stack([r for r, _ in drawn])
            noise = None if drawn[0][1] is None else np.stack([z for _, z in drawn])
            states, actions = self.simulate_closed_loop(initial, policy, replace, noise,
                                                        cfg.policy.name, models, actuation)
        else:
            initial, warmstart, goals = self.reset_states(list(seeds))
            actions = np.stack([policy_actions(cfg.policy, cfg.length, rng) for rng in rngs])
            states = self.simulate(initial, warmstart, actuate(actions, actuation), models)
        return [
            storage.Episode(
                id=i, seed=seeds[j], observations=states[j], actions=actions[j],
                rewards=self.env.reward(states[j, 1:], goals[j]), goal=goals[j],
                physics=factors[j],
            )
            for j, i in enumerate(ids)
        ]

    def hidden_physics(self, cfg: CollectConfig, ids: range
                       ) -> tuple[list[dict[str, float]], list[Any] | None, np.ndarray | None]:
        """Episodes ``ids``' drawn factors, their models (None if nominal) and actuation
        noise (B, T, A; None if none), from :func:`~trajebm.data.randomize.draw_hidden`."""
        drawn = [draw_hidden(cfg.randomize, cfg.actuation_noise, cfg.length, cfg.seed, i)
                 for i in ids]
        factors = [f for f, _ in drawn]
        models = [randomized_model(self.model, f) for f in factors] if cfg.randomize else None
        actuation = np.stack([z for _, z in drawn]) if cfg.actuation_noise > 0 else None
        return factors, models, actuation


def _manifest(cfg: CollectConfig, shard: tuple[int, int] | None = None) -> dict[str, Any]:
    versions = package_versions(("mujoco", "gymnasium", "gymnasium-robotics"))
    config = {k: v for k, v in jsonable(cfg).items() if k not in HIDDEN_FIELDS or v}
    manifest = {"config": config, "versions": versions}
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
    data_dir, partial = out / "data", out / storage.PARTIAL_DIR
    finished = (data_dir / storage.METADATA_FILE).is_file()
    ours = finished or (partial / storage.MANIFEST_FILE).is_file()
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
        previous = recorded_collection(_read_json(data_dir / storage.METADATA_FILE))
        if previous != manifest:
            raise UsageError(f"{out} holds a finished dataset with other settings; use --overwrite")
        shutil.rmtree(partial, ignore_errors=True)
        return False
    if (partial / storage.MANIFEST_FILE).is_file():
        if _read_json(partial / storage.MANIFEST_FILE) != manifest:
            raise UsageError(
                f"{out} holds an interrupted collection with other settings or versions "
                "(see .partial/collect.json); use --overwrite or the same options"
            )
    return True


def collect(cfg: CollectConfig, out: str | os.PathLike, workers: int | None = None,
            resume: bool = False, overwrite: bool = False, dataset_id: str | None = None,
            progress: bool = True, shard: tuple[int, int] | None = None) -> Path:
    """Collect the dataset ``cfg`` into folder ``out`` (Minari layout) and return ``out/data``.

    With ``shard=(i, n)`` only the block :func:`~trajebm.data.shards.shard_ids` of episodes
    is collected, into a shard folder for :func:`~trajebm.data.shards.merge_shards`. Bad
    input (including a closed-loop policy that returns actions of the wrong shape or NaN)
    raises :class:`UsageError` and leaves no output folder behind that this call created.
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
    dataset_id = storage.check_dataset_id(dataset_id or storage.default_dataset_id(out))
    manifest = _manifest(cfg, shard)
    if not _prepare_output(out, manifest, resume, overwrite):
        return out / "data"
    partial = out / storage.PARTIAL_DIR
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
    partial = out / storage.PARTIAL_DIR
    write_json(partial / storage.MANIFEST_FILE, manifest)
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
        data_dir = out / "data"
        data_dir.mkdir(exist_ok=True)
        storage.merge_episode_files(chunks, data_dir / storage.MAIN_FILE)
        size = round((data_dir / storage.MAIN_FILE).stat().st_size / 1e6, 3)
        storage.write_metadata(data_dir, collection_document(
            cfg, collector.env, manifest, dataset_id, ids, shard, size))
    write_json(out / "run.json", {"workers": workers, "shard": shard, **_run_record(cfg)})
    shutil.rmtree(partial)
    return data_dir


def _chunk_ids(cfg: CollectConfig, ids: range, k: int) -> range:
    return ids[k * cfg.chunk_episodes : (k + 1) * cfg.chunk_episodes]


def _run_record(cfg: CollectConfig) -> dict[str, Any]:
    return run_info(dataclasses.asdict(cfg), cfg.seed)
