"""Rollout speed: predicted states per second of each model vs the simulator on the same steps.

What: ``trajebm.rollout.predict_rollouts`` throughput (predicted steps x samples per second)
for the EBM (20 Langevin steps per predicted state), the feed-forward net and the ensemble,
against ``mujoco.rollout`` simulating the same number of env steps (same batch of starts
and actions, ``n_substeps`` physics steps each, multi-threaded).

Why: a learned model is only useful as a simulator substitute if it is not much slower than
the simulator; the EBM pays for its sampler with ~20 forward+backward passes per step.

Method: models are built untrained (speed does not depend on the weights) with the default
architecture (3 x 128); one warm-up call, then the best of ``--repeats`` timed calls. The EBM
rows are the default ``ebm-proposal`` model, eager and compiled (``compile=True``; its
warm-up call compiles), with their achieved GFLOP/s (matrix products counted on an eager
call) against a 2048^3 float32 matmul's in the same run.

Run: ``.venv/bin/python benchmarks/bench_rollout.py`` (about 4 minutes on 2 CPU cores, most of
it the simulator reference). For quick checks, ``--sim-horizon 24`` simulates fewer steps
for the reference rate, and ``--sim-rate R`` reuses a rate measured before (no simulation).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from bench_train import matmul_flops, step_flops

import trajebm.envs  # noqa: F401
from trajebm.data.collection import RolloutCollector, episode_seeds
from trajebm.data.policies import PolicyConfig, policy_actions
from trajebm.engine.sampling import langevin
from trajebm.models import TrajectoryEBM, build_model, model_config
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
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch intra-op threads (default: as many as the simulator's workers)")
    p.add_argument("--sim-horizon", type=int, default=None,
                   help="simulate this many steps for the reference rate (default: --horizon)")
    p.add_argument("--sim-rate", type=float, default=None,
                   help="reuse this simulator rate (states/s) instead of simulating")
    return p.parse_args()


class ProposeBefore(TrajectoryEBM):
    """``propose`` as it was before ``chain_energy``: the full forward at every Langevin step
    (the head computed once per chain), the reference of the eager and compiled rows."""

    def propose(self, cond, *, steps=None, temperature=1.0, extra=None, members=None,
                compile=False):
        self.eval()
        with torch.no_grad():
            mu = self.center(cond)
        return langevin(lambda x, c: self(x, c, center=mu), self.init_chains(cond), cond,
                        self.config.sampler, temperature=temperature)


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def simulate(args: argparse.Namespace, n: int) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Start states (n, 4, D), actions (n, horizon + 4, A) and the simulator's states/s (None
    when only the starts are needed: ``--sim-rate`` given)."""
    sim_horizon = args.sim_horizon or args.horizon
    with RolloutCollector(ENV, workers=args.workers) as collector:
        seeds = [episode_seeds(0, i)[0] for i in range(n)]
        initial, warm, _ = collector.reset_states(seeds)
        rng = np.random.default_rng(0)
        actions = np.stack([policy_actions(PolicyConfig(), max(args.horizon, sim_horizon) + 4,
                                           rng) for _ in range(n)])
        states = collector.simulate(initial, warm, actions[:, :3])
        if args.sim_rate is not None:
            return states, actions, None
        sim = best_time(lambda: collector.simulate(initial, warm, actions[:, :sim_horizon]),
                        args.repeats)
    return states, actions, n * sim_horizon / sim


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    n = args.contexts * args.samples
    states, actions, sim_rate = simulate(args, n)
    sim_rate = args.sim_rate if sim_rate is None else sim_rate
    context = states[: args.contexts, :4].astype(np.float32)
    acts = actions[: args.contexts, 3 : 3 + args.horizon]
    steps = n * args.horizon
    peak = matmul_flops(torch.device(args.device))
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, load "
          f"average {os.getloadavg()[0]:.2f}; {args.contexts} contexts x {args.samples} samples "
          f"x {args.horizon} steps; float32 2048^3 matmul {peak / 1e9:,.0f} GFLOP/s\n")
    print("| predictor | predicted states/s | time (s) | vs simulator | GFLOP/s |")
    print("|---|---:|---:|---:|---:|")
    source = "reused" if args.sim_rate is not None else f"{args.sim_horizon or args.horizon} steps"
    print(f"| mujoco.rollout ({args.workers} threads, {source}) | {sim_rate:,.0f} | "
          f"{steps / sim_rate:.2f} | 1.00 | |")
    head = dict(proposal=True, init_noise=0.1)
    rows = [("ebm-proposal, eager before chain_energy", "ebm", head, None),
            ("ebm-proposal, eager", "ebm", head, False),
            ("ebm-proposal, compiled", "ebm", head, True),
            ("ebm (no head), eager", "ebm", {}, False),
            ("fc", "fc", {}, False), ("ensemble", "ensemble", {}, False)]
    before = eager_time = float("nan")
    for name, kind, kwargs, compiled in rows:
        torch.manual_seed(0)
        config = model_config(kind, state_dim=states.shape[-1], **kwargs)
        model = ProposeBefore(config) if compiled is None else build_model(config)

        def run(m=model, c=bool(compiled)):
            return predict_rollouts(m, context, acts, args.horizon, args.samples, seed=0,
                                    device=args.device, compile=c)

        t = best_time(run, args.repeats)
        flops = step_flops(lambda m=model: predict_rollouts(
            m, context, acts, args.horizon, args.samples, seed=0, device=args.device))
        speedup = ""
        if compiled is None:
            before = t
        elif name == "ebm-proposal, eager":
            eager_time = t
            speedup = f" ({before / t:.2f}x before)"
        elif name == "ebm-proposal, compiled":
            speedup = f" ({before / t:.2f}x before, {eager_time / t:.2f}x eager)"
        print(f"| {name}{speedup} | {steps / t:,.0f} | {t:.2f} | {steps / t / sim_rate:.2f} | "
              f"{flops / t / 1e9:.1f} |")


if __name__ == "__main__":
    main()
