"""Collection throughput: `trajebm.data.collect` vs raw `mujoco.rollout` vs AsyncVectorEnv.

What: environment steps per second of (1) the end-to-end collection function (env
construction, parallel resets, policy actions, multi-threaded rollout, durable chunk
writes, the final merge into the Minari file and its metadata), (2) the raw reference: only
the ``mujoco.rollout`` calls on the same initial states and controls, in the same chunks
and threads, (3) gymnasium's AsyncVectorEnv with one process per worker stepping the
same env one action at a time, and (4) closed-loop collection (``--closed-policy``, default
the pd controller: a policy call per step and ``mujoco.batch`` stepping) against raw
``mujoco.rollout`` on the same initial states and the controls recorded from that run.

Why: the issue's targets are end-to-end >= 80% of raw ``mujoco.rollout`` throughput for
open-loop policies and >= 60% for closed-loop ones. Absolute numbers depend on the machine
and on how much contact the policy produces, so ratios are measured in the same run on the
same episodes.

Method: one warm-up collection, then ``--repeats`` interleaved timed runs of the raw
rollout and of ``collect``, keeping the fastest of each (other load on the machine only
ever slows a run down); the AsyncVectorEnv reference runs fewer episodes (it is slow).

Run: ``.venv/bin/python benchmarks/bench_collect.py`` (about 4-5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import h5py
import mujoco
import numpy as np
from mujoco import rollout

import trajebm.envs
from trajebm.data.collection import CollectConfig, RolloutCollector, collect, episode_seeds
from trajebm.data.policies import PolicyConfig, policy_actions


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=128)
    p.add_argument("--length", type=int, default=100)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--policy", default="scripted", help="the open-loop policy")
    p.add_argument("--closed-policy", default="pd",
                   help="the closed-loop policy (pd or module:function)")
    p.add_argument("--vector-episodes", type=int, default=16,
                   help="episodes for the (slow) AsyncVectorEnv reference")
    p.add_argument("--repeats", type=int, default=2,
                   help="interleaved timed runs of collect and raw rollout; the best is kept")
    return p.parse_args()


def time_collect(cfg: CollectConfig, workers: int) -> tuple[float, np.ndarray]:
    """Seconds of one end-to-end collection, and the actions (E, T, A) it recorded."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data_dir = collect(cfg, Path(tmp) / "ds", workers=workers, progress=False)
        elapsed = time.perf_counter() - start
        with h5py.File(data_dir / "main_data.hdf5", "r") as f:
            actions = np.stack([f[f"episode_{i}/actions"][()] for i in range(cfg.episodes)])
        return elapsed, actions


def time_raw_rollout(cfg: CollectConfig, workers: int,
                     recorded: np.ndarray | None = None) -> float:
    """Only the rollout calls, on the collector's own initial states and controls.

    The controls are the open-loop policy's, or those of ``recorded`` actions (E, T, A).
    """
    with RolloutCollector(cfg.env_id, cfg.include_velocities, workers) as collector:
        model, nsub = collector.model, collector.env.n_substeps
        datas = [mujoco.MjData(model) for _ in range(workers)]
        batches = []
        for first in range(0, cfg.episodes, cfg.chunk_episodes):
            ids = range(first, min(cfg.episodes, first + cfg.chunk_episodes))
            seeds, rngs = zip(*(episode_seeds(cfg.seed, i) for i in ids), strict=True)
            initial, warm, _ = collector.reset_states(list(seeds))
            if recorded is None:
                actions = np.stack([policy_actions(cfg.policy, cfg.length, r) for r in rngs])
            else:
                actions = recorded[ids.start : ids.stop]
            ctrl = np.repeat(trajebm.envs.control_from_action(model, actions), nsub, axis=1)
            batches.append((initial, ctrl, warm))
    elapsed = 0.0
    with rollout.Rollout(nthread=workers) as pool:
        for initial, ctrl, warm in batches:
            start = time.perf_counter()
            pool.rollout(model, datas, initial, ctrl, initial_warmstart=warm)
            elapsed += time.perf_counter() - start
    return elapsed


def time_async_vector_env(cfg: CollectConfig, workers: int, episodes: int) -> float:
    vec = gym.vector.AsyncVectorEnv([lambda: gym.make(cfg.env_id)] * workers)
    try:
        start = time.perf_counter()
        for first in range(0, episodes, workers):
            ids = [first + w for w in range(workers)]
            seeds, rngs = zip(*(episode_seeds(cfg.seed, i) for i in ids), strict=True)
            actions = np.stack([policy_actions(cfg.policy, cfg.length, r) for r in rngs])
            vec.reset(seed=list(seeds))
            for t in range(cfg.length):
                vec.step(actions[:, t])
        return time.perf_counter() - start
    finally:
        vec.close()


def main() -> None:
    args = parse_args()
    cfg = CollectConfig(episodes=args.episodes, length=args.length,
                        policy=PolicyConfig(args.policy), chunk_episodes=32)
    steps = cfg.episodes * cfg.length
    vec_episodes = max(args.workers, args.vector_episodes - args.vector_episodes % args.workers)
    closed = replace(cfg, policy=PolicyConfig(args.closed_policy))
    time_collect(replace(cfg, episodes=args.workers), args.workers)  # warm-up: imports, caches
    time_collect(replace(closed, episodes=args.workers), args.workers)
    raw, end_to_end, raw_closed, end_to_end_closed = math.inf, math.inf, math.inf, math.inf
    for _ in range(args.repeats):
        raw = min(raw, time_raw_rollout(cfg, args.workers))
        end_to_end = min(end_to_end, time_collect(cfg, args.workers)[0])
        elapsed, recorded = time_collect(closed, args.workers)
        end_to_end_closed = min(end_to_end_closed, elapsed)
        raw_closed = min(raw_closed, time_raw_rollout(closed, args.workers, recorded))
    vec = time_async_vector_env(cfg, args.workers, vec_episodes)
    nsub = trajebm.envs.ShadowHandEnv().n_substeps
    rows = [
        ("raw mujoco.rollout (reference)", steps / raw, steps / raw),
        ("trajebm collect, end to end", steps / end_to_end, steps / raw),
        (f"AsyncVectorEnv ({args.workers} procs)", vec_episodes * cfg.length / vec, steps / raw),
        (f"raw rollout, {args.closed_policy}'s controls", steps / raw_closed, steps / raw_closed),
        (f"collect closed loop ({args.closed_policy})", steps / end_to_end_closed,
         steps / raw_closed),
    ]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"mujoco {mujoco.__version__}, {args.workers} workers, open-loop policy "
          f"{args.policy}, closed-loop policy {args.closed_policy}, "
          f"{cfg.episodes} episodes x {cfg.length} steps ({nsub} physics steps each)")
    print(f"| {'method':<32} | env steps/s | physics steps/s | vs raw rollout |")
    print(f"|{'-' * 34}|-------------|-----------------|----------------|")
    for name, rate, reference in rows:
        print(f"| {name:<32} | {rate:>11,.0f} | {rate * nsub:>15,.0f} | "
              f"{rate / reference:>13.0%} |")


if __name__ == "__main__":
    main()
