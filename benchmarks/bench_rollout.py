"""Rollout speed: predicted states per second of each model vs the simulator on the same steps.

What: ``trajebm.rollout.predict_rollouts`` throughput (predicted steps x samples per second)
for the EBM (20 Langevin steps per predicted state), the feed-forward net and the ensemble,
against ``mujoco.rollout`` simulating the same number of env steps (same batch of starts
and actions, ``n_substeps`` physics steps each, multi-threaded).

Why: a learned model is only useful as a simulator substitute if it is not much slower than
the simulator; the EBM pays for its sampler with ~20 forward+backward passes per step.

Method: models are built untrained (speed does not depend on the weights) with the default
architecture (3 x 128); one warm-up call, then the best of ``--repeats`` timed calls.

Run: ``.venv/bin/python benchmarks/bench_rollout.py`` (about 4 minutes on 2 CPU cores, most of
it the simulator reference).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

import trajebm.envs  # noqa: F401
from trajebm.data.collection import RolloutCollector, episode_seeds
from trajebm.data.policies import PolicyConfig, policy_actions
from trajebm.models import ModelConfig, build_model
from trajebm.rollout import predict_rollouts

ENV = "trajebm/ShadowHandBlock-v0"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", type=int, default=16)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--horizon", type=int, default=96)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: small batches gain nothing from more)")
    return p.parse_args()


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    n = args.contexts * args.samples
    with RolloutCollector(ENV, workers=args.workers) as collector:
        seeds = [episode_seeds(0, i)[0] for i in range(n)]
        initial, warm, _ = collector.reset_states(seeds)
        rng = np.random.default_rng(0)
        actions = np.stack([policy_actions(PolicyConfig(), args.horizon + 4, rng)
                            for _ in range(n)])
        states = collector.simulate(initial, warm, actions[:, :3])
        sim = best_time(lambda: collector.simulate(initial, warm, actions[:, : args.horizon]),
                        args.repeats)
    context = states[: args.contexts, :4].astype(np.float32)
    acts = actions[: args.contexts, 3 : 3 + args.horizon]
    steps = n * args.horizon
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
          f"{args.contexts} contexts x {args.samples} samples x {args.horizon} steps\n")
    print("| predictor | predicted states/s | time (s) | vs simulator |")
    print("|---|---:|---:|---:|")
    print(f"| mujoco.rollout ({args.workers} threads) | {steps / sim:,.0f} | {sim:.2f} | 1.00 |")
    for kind in ("ebm", "fc", "ensemble"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(kind=kind, state_dim=states.shape[-1]))
        t = best_time(lambda m=model: predict_rollouts(
            m, context, acts, args.horizon, args.samples, seed=0, device=args.device),
            args.repeats)
        print(f"| {kind} | {steps / t:,.0f} | {t:.2f} | {sim / t:.2f} |")


if __name__ == "__main__":
    main()
