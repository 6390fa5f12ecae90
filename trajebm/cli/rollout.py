"""`trajebm rollout`: :func:`trajebm.rollout.rollout_dataset`."""

from __future__ import annotations

import argparse

from trajebm.cli.options import add_option, add_options, config_from
from trajebm.rollout import RolloutConfig, rollout_dataset


def run(args: argparse.Namespace) -> int:
    info = rollout_dataset(args.model, args.data, args.out, config_from(RolloutConfig, args))
    print(f"wrote predictions {tuple(info['shape'])} to {info['out']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``trajebm rollout``."""
    p = subparsers.add_parser("rollout", help="predict rollouts of a trained model on a dataset")
    p.add_argument("--model", required=True, help="run folder (or model.pt) of `trajebm train`")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--out", required=True, help="output .npz file")
    add_options(p, RolloutConfig, ("horizon", "samples", "episodes"))
    add_option(p, RolloutConfig, "split", choices=["train", "val", "test", "all"])
    add_options(p, RolloutConfig, ("langevin_steps", "temperature", "seed", "device"))
    add_option(p, RolloutConfig, "compile", nargs="?", const=True, type=None, metavar="MODE",
               help="compile the EBM's Langevin steps (torch.compile; optional MODE, e.g. "
                    "reduce-overhead for CUDA graphs on a GPU)")
    p.set_defaults(func=run)
