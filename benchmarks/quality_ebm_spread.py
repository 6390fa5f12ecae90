"""Where an EBM's rollout spread comes from: its chain start or its energy.

What: one trained trajectory EBM rolls out held-out starts (test episodes after the first
``--skip``, so disjoint from the starts `trajebm compare --episodes 150` scores) with 16
samples over 96 steps, once per setting: the sampling temperature (multiplies the Langevin
noise variance) and the chains' start noise ``init_noise`` (U(-a, a) around the proposal head,
z units). Prints the energy score over the rollout and at its last step, the coverage of
central 50% and 90% intervals and the spread–skill ratio (``trajebm.evaluate.scores``), with
states divided by the held-out truth's spread per coordinate.

    .venv/bin/python benchmarks/quality_ebm_spread.py \\
        --model runs/cmp-hidden-ou/ebm-proposal/seed0 --data runs/hidden-ou5k \\
        --temperatures 1 2 4 8 --init-noise 0.1 0.2 0.3 0.5 0.8
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="run folder of an EBM")
    p.add_argument("--data", required=True, help="the dataset it was trained on")
    p.add_argument("--temperatures", type=float, nargs="*", default=[1.0])
    p.add_argument("--init-noise", type=float, nargs="*", default=[])
    p.add_argument("--skip", type=int, default=150, help="test episodes left out first")
    p.add_argument("--starts", type=int, default=150)
    p.add_argument("--horizon", type=int, default=96)
    args = p.parse_args()
    configure_threads(1)
    model = load_model(f"{args.model}/model.pt")
    k, own = model.config.context, model.split
    ds = TrajectoryDataset(args.data, context=k, test_fraction=own["test_fraction"],
                           seed=own["seed"], dtype="float32")
    states, actions = ds.trajectories("test", limit=args.skip + args.starts)
    states, actions = states[args.skip :], actions[args.skip :]
    h = args.horizon
    truth = states[:, k : k + h]
    scale = truth.reshape(-1, truth.shape[-1]).std(0) + 1e-8
    settings = [(t, model.config.init_noise) for t in args.temperatures]
    settings += [(1.0, a) for a in args.init_noise]
    print(f"{time.strftime('%Y-%m-%d')}: {args.model}, {len(states)} held-out starts x 16 "
          f"samples x {h} steps\n")
    print("| temperature | init noise | ES | ES@last | coverage 50% | coverage 90% | "
          "spread-skill |\n|---|---|---|---|---|---|---|")
    for temperature, init_noise in settings:
        model.config.init_noise = init_noise
        pred = predict_rollouts(model, states[:, :k], actions[:, k - 1 : k - 1 + h], h, 16,
                                None, temperature, seed=0)
        print(f"| {temperature:g} | {init_noise:g} | {scores(pred / scale, truth / scale)} |",
              flush=True)


if __name__ == "__main__":
    main()
