"""`trajebm toy`: :func:`trajebm.toy.run_toy` on a named 2-D density or an N×D array."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from trajebm.cli.options import add_option, add_options
from trajebm.engine.errors import UsageError
from trajebm.engine.train import TrainConfig
from trajebm.toy import DENSITIES, ToyConfig, run_toy


def run(args: argparse.Namespace) -> int:
    try:
        cfg = ToyConfig(seed=args.seed, ais_steps=args.ais_steps, ais_chains=args.ais_chains)
        cfg = replace(cfg, train=replace(cfg.train, steps=args.steps, progress=args.progress))
    except ValueError as err:
        raise UsageError(str(err)) from None
    metrics = run_toy(args.out, args.density, args.data, cfg, args.overwrite)
    print(f"energy distance to held-out data: {metrics['energy_distance']:.4f} "
          f"(Gaussian fit: {metrics['energy_distance_gaussian_fit']:.4f}, "
          f"train vs test: {metrics['energy_distance_train_vs_test']:.4f})")
    if metrics["collapsed"]:
        print(f"warning: collapsed (samples {metrics['energy_gap']:.1f} nats above the held-out "
              "data: the energy separates them; see docs/results/trajectories.md)")
    if "modes" in metrics:
        print(f"8gaussians mode weights {metrics['modes']['mode_weights']}, "
              f"outliers {metrics['modes']['outlier_fraction']:.3f}")
    print(f"wrote {args.out}/samples.npy, metrics.json, toy.png, run.json")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``trajebm toy``."""
    p = subparsers.add_parser("toy", help="fit an EBM to a 2-D toy density or an N×D .npy array",
                              description=run_toy.__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--density", choices=sorted(DENSITIES), help="a standard 2-D density")
    src.add_argument("--data", type=Path, help="an N×D float .npy array (N >= 100)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    default = ToyConfig()
    add_option(p, TrainConfig, "steps", default=default.train.steps)
    add_options(p, ToyConfig, ("seed", "ais_steps", "ais_chains"))
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty output directory")
    add_option(p, TrainConfig, "progress", "--no-progress", help="hide the progress bar")
    p.set_defaults(func=run)
