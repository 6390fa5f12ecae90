"""Planning speed: control steps per second for ONE episode (no batching across episodes).

What: `trajebm plan`'s planners on trained models (run folders of `trajebm train` on the same
dataset), each planning a single episode of the `move` task, timed per control step (the
planner's own time, not MuJoCo's execution), with the oracle — MPPI on the true simulator with
64 candidates — as the reference in the same run. Targets (issue 21): MPPI on the ensemble at
PDDM's settings (horizon 7, 700 candidates) >= 10 control steps per second; the EBM planner
>= 3.

    .venv/bin/python benchmarks/bench_plan.py --models runs/plan-models/fc-s0 \\
        runs/plan-models/ensemble-s0 runs/plan-models/ebm-proposal-s0
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from trajebm.engine.threads import configure_threads
from trajebm.modelio import load_model
from trajebm.plan import PlanConfig, run_plan
from trajebm.plan.job import open_simulator

ROWS = (("oracle", None, 64), ("mppi", "fc", 700), ("mppi", "ensemble", 700),
        ("mppi", "ebm", None), ("cem", "ensemble", None), ("shooting", "fc", None),
        ("langevin", "ebm", None))
"""(planner, model kind, budget or None for its equal-time default)."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="run folders (one per kind)")
    p.add_argument("--steps", type=int, default=10, help="control steps timed per row")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    configure_threads(args.threads)
    models = {m.kind: m for m in (load_model(path) for path in args.models)}
    simulator = open_simulator("trajebm/ShadowHandBlock-v0", 1)
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); one episode, `move`, {args.steps} control "
          f"steps per row\n")
    print("| planner | model | budget | ms per control step | control steps/s | vs oracle |")
    print("|---|---|---:|---:|---:|---:|")
    reference = None
    for planner, kind, budget in ROWS:
        if kind is not None and kind not in models:
            continue
        cfg = PlanConfig(task="move", planner=planner, episodes=1, length=args.steps,
                         budget=budget, progress=False, video=False)
        summary = run_plan(models.get(kind), cfg, simulator).summary()
        ms = summary["ms_per_step"]
        reference = reference or ms
        print(f"| {planner} | {kind or 'simulator'} | {budget or 'equal-time'} | {ms:.1f} | "
              f"{1000 / ms:.1f} | {reference / ms:.1f}x |")
    simulator.close()


if __name__ == "__main__":
    main()
