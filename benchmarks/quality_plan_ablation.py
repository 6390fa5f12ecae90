"""Ablations of the energy's own planner (`langevin`): what its settings do to success in MuJoCo.

What: for each setting below, the Langevin planner on an EBM (one model per seed, e.g. the
five `ebm-proposal` runs of the planning comparison) plans the same episodes (seed s: resets
and goals of `trajebm plan --seed s`), and the table gives the median success rate over seeds
with a 95% bootstrap interval, the median final error, the self-deception gap and the planning
time per control step (30 episodes planned together would be ~10x cheaper per episode than
the batches here; compare rows with each other).

    .venv/bin/python benchmarks/quality_plan_ablation.py \\
        --model 'runs/plan-models/ebm-proposal-s{seed}' --task move --seeds 5 --episodes 10
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from trajebm.engine.stats import median_interval
from trajebm.engine.threads import configure_threads
from trajebm.modelio import load_model
from trajebm.plan.dynamics import LearnedDynamics
from trajebm.plan.episodes import goal_generator, reset_seeds, run_episodes
from trajebm.plan.job import open_simulator
from trajebm.plan.langevin import LangevinPlanner
from trajebm.plan.planners import Replanning
from trajebm.plan.tasks import TASKS

VARIANTS = {
    "default (15 steps, 16 chains, horizon 7, smoothness 0.1, rollout choice)": {},
    "chain length 5": {"steps": 5},
    "chain length 40": {"steps": 40},
    "no action prior (smoothness 0)": {"smoothness": 0.0},
    "strong action prior (smoothness 1)": {"smoothness": 1.0},
    "horizon 4": {"horizon": 4},
    "horizon 12": {"horizon": 12},
    "choice by plan energy (free states believed)": {"select": "energy"},
    "model energy x10": {"model_weight": 10.0},
    "replanning every 2 steps": {"every": 2},
    "replanning every 4 steps": {"every": 4},
}
"""Each row's settings of :class:`trajebm.plan.langevin.LangevinPlanner` over the default
(``every``: :class:`trajebm.plan.planners.Replanning`)."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="run folder, or a pattern with {seed}")
    p.add_argument("--task", default="move", choices=list(TASKS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--length", type=int, default=50)
    p.add_argument("--rows", nargs="+", default=None,
                   help="only the rows whose names contain one of these words")
    args = p.parse_args()
    configure_threads(1)
    task = TASKS[args.task]
    models = [load_model(args.model.replace("{seed}", str(s))) for s in range(args.seeds)]
    simulator = open_simulator("trajebm/ShadowHandBlock-v0", 1)
    print(f"{time.strftime('%Y-%m-%d')}: `{args.task}`, {args.seeds} seeds x {args.episodes} "
          f"episodes, {args.model}\n")
    print("| setting | success [95% interval] | final error | self-deception | ms/step |")
    print("|---|---|---:|---:|---:|")
    rows = {name: settings for name, settings in VARIANTS.items()
            if args.rows is None or any(word in name for word in args.rows)}
    for name, settings in rows.items():
        success, errors, gaps, times = [], [], [], []
        for seed, model in enumerate(models):
            torch.manual_seed(seed)
            every = settings.get("every", 1)
            planner = LangevinPlanner(LearnedDynamics(model), task, **{
                "steps": 15, "seed": seed,
                **{k: v for k, v in settings.items() if k != "every"}})
            if every > 1:
                planner = Replanning(planner, every)
            run = run_episodes(planner, task, simulator, reset_seeds(seed, args.episodes),
                               goal_generator(seed, args.task), args.length)
            success.append(run.success.astype(float))
            errors.append(np.median(run.final_error))
            gaps.append(np.median(run.predicted_error - run.final_error))
            times.append(run.ms_per_step)
        rate = median_interval(np.stack(success))
        print(f"| {name} | {rate.value:.2f} [{rate.low:.2f}, {rate.high:.2f}] | "
              f"{np.median(errors):.4g} | {np.median(gaps):.3g} | {np.median(times):.0f} |",
              flush=True)
    simulator.close()


if __name__ == "__main__":
    main()
