"""Where an EBM's rollout spread comes from: its chain start or its energy.

What: trained trajectory EBMs roll out held-out starts with 16 samples over 96 steps, once
per setting: the sampling temperature (multiplies the Langevin noise variance) and the chains'
start noise ``init_noise`` (U(-a, a) around the proposal head, z units). The starts are the
models' validation episodes (``--split val``, the default: settings chosen here are then
scored on test starts by `trajebm compare`) or test episodes after the first ``--skip``
(``--split test``, disjoint from the starts `trajebm compare --episodes 150` scores).
Prints the energy score over the rollout and at its last step, the coverage of central 50%
and 90% intervals and the spread–skill ratio (``trajebm.evaluate.scores``), with states
divided by the held-out truth's spread per coordinate.

    .venv/bin/python benchmarks/quality_ebm_spread.py \\
        --model runs/cmp-hidden-ou/ebm-proposal/seed0 runs/spread-probe/a \\
        --data runs/hidden-ou5k --temperatures 1 2 4 --init-noise 0.05 0.2
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from trajebm.data import TrajectoryDataset
from trajebm.engine.threads import configure_threads
from trajebm.evaluate.scores import coverage, energy_score
from trajebm.modelio import load_model
from trajebm.rollout import predict_rollouts


def scores(pred: np.ndarray, truth: np.ndarray) -> str:
    """ES, ES at the last step, coverage 50/90 and spread–skill of z-unit rollouts."""
    es = energy_score(np.moveaxis(pred, 1, 2), truth).mean()
    last = energy_score(pred[:, :, -1], truth[:, -1]).mean()
    cover = coverage(pred, truth, (50, 90)).mean(0)
    s = pred.shape[1]
    spread = np.sqrt((s + 1) / s * pred.var(1, ddof=1).mean())
    error = np.sqrt(((pred.mean(1) - truth) ** 2).mean())
    return (f"{es:.3f} | {last:.3f} | {cover[0]:.2f} | {cover[1]:.2f} | "
            f"{spread / error:.2f}")


def held_out(model, data: str, split: str, skip: int, starts: int):
    """States and actions of the model's own held-out episodes (its split, as trained)."""
    k, own = model.config.context, model.meta["split"]
    ds = TrajectoryDataset(data, context=k, test_fraction=own["test_fraction"],
                           seed=own["seed"], dtype="float32", val_fraction=own["val_fraction"])
    first = skip if split == "test" else 0
    states, actions = ds.trajectories(split, limit=first + starts)
    return states[first:], actions[first:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, nargs="+", help="run folders of EBMs")
    p.add_argument("--data", required=True, help="the dataset they were trained on")
    p.add_argument("--temperatures", type=float, nargs="*", default=[1.0])
    p.add_argument("--init-noise", type=float, nargs="*", default=[])
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--skip", type=int, default=150, help="test episodes left out first")
    p.add_argument("--starts", type=int, default=150)
    p.add_argument("--horizon", type=int, default=96)
    args = p.parse_args()
    configure_threads(1)
    print(f"{time.strftime('%Y-%m-%d')}: {args.starts} {args.split} starts x 16 samples x "
          f"{args.horizon} steps\n")
    print("| model | temperature | init noise | ES | ES@last | coverage 50% | coverage 90% | "
          "spread-skill |\n|---|---|---|---|---|---|---|---|")
    for run in args.model:
        model = load_model(f"{run}/model.pt")
        k, h = model.config.context, args.horizon
        states, actions = held_out(model, args.data, args.split, args.skip, args.starts)
        truth = states[:, k : k + h]
        scale = truth.reshape(-1, truth.shape[-1]).std(0) + 1e-8
        settings = [(t, model.config.init_noise) for t in args.temperatures]
        settings += [(1.0, a) for a in args.init_noise if a != model.config.init_noise]
        for temperature, init_noise in settings:
            model.config.init_noise = init_noise
            pred = predict_rollouts(model, states[:, :k], actions[:, k - 1 : k - 1 + h], h,
                                    16, None, temperature, seed=0)
            print(f"| {run} | {temperature:g} | {init_noise:g} | "
                  f"{scores(pred / scale, truth / scale)} |", flush=True)


if __name__ == "__main__":
    main()
