"""Quality: how much of ``ebm-proposal``'s accuracy comes from its regression head alone.

What: for every seed of an ``ebm-proposal`` run in a ``trajebm compare`` report, the FD at
predicted steps 10, 50 and 96 of (a) the full EBM's scored rollouts (the report's
``eval.npz``) and (b) rollouts of the head mu(context, a_t) alone: no Langevin steps, no
chain-start noise, one deterministic sample per start.

Why: ``ebm-proposal`` starts its Langevin chains at a learned guess; if the head alone
predicts as well as the whole model, the energy adds nothing measurable.

Method: the model's own test split (all test starts), z-scored FD with one point per start,
as ``trajebm compare`` scores it; medians over seeds.

Run: ``.venv/bin/python benchmarks/quality_proposal_head.py --report cmp --data data/hand``
(~20 s per seed on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from trajebm.evaluate import fd_per_step, load_test_set
from trajebm.modelio import load_model
from trajebm.rollout import predict_rollouts

STEPS = (10, 50, 96)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--report", required=True, help="a trajebm compare report folder")
    p.add_argument("--data", required=True, help="the dataset the report was trained on")
    p.add_argument("--variant", default="ebm-proposal", help="folder of the variant")
    return p.parse_args()


def fd_at_steps(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    """FD at STEPS of (n, S, H, D) z-scored predictions, as ``trajebm compare`` scores them."""
    at = [t - 1 for t in STEPS]
    return fd_per_step(pred[:, :, at], truth[:, at]).tolist()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    head_rows, full_rows = [], []
    print(f"| seed | head FD@{'/'.join(map(str, STEPS))} | full EBM FD@"
          f"{'/'.join(map(str, STEPS))} |\n|---|---|---|")
    for run in sorted(Path(args.report, args.variant).glob("seed*")):
        model = load_model(run)
        if not model.config.proposal:
            raise SystemExit(f"{run} has no proposal head")
        model.config = dataclasses.replace(model.config, init_noise=0.0)
        k, horizon = model.config.context, max(STEPS)
        test = load_test_set(args.data, model.split, k)
        acts = test.actions[:, k - 1 : k - 1 + horizon]
        head = predict_rollouts(model, test.states[:, :k], acts, horizon, 1, 0, seed=0)
        truth = test.stats.normalize(test.states[:, k : k + horizon]).astype(np.float64)
        head_rows.append(fd_at_steps(test.stats.normalize(head).astype(np.float64), truth))
        full = np.load(run / "eval.npz")["pred"].astype(np.float64)
        full_rows.append(fd_at_steps(full, truth))
        print(f"| {run.name} | {' / '.join(f'{v:.3f}' for v in head_rows[-1])} | "
              f"{' / '.join(f'{v:.3f}' for v in full_rows[-1])} |", flush=True)
    head_median, full_median = np.median(head_rows, 0), np.median(full_rows, 0)
    print(f"| median | {' / '.join(f'{v:.3f}' for v in head_median)} | "
          f"{' / '.join(f'{v:.3f}' for v in full_median)} |")


if __name__ == "__main__":
    main()
