"""`trajebm steer`: goal-steered EBM rollouts, their reach rates and their physics cost."""

from __future__ import annotations

import argparse
from pathlib import Path

from trajebm.cli.options import add_option, add_options, config_from
from trajebm.steer import SteerConfig, steer, steer_markdown


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``trajebm steer``."""
    p = subparsers.add_parser("steer", help="goal-steered EBM rollouts: reach rate and cost")
    p.add_argument("--models", nargs="+", required=True, help="EBM run folders (e.g. seeds)")
    p.add_argument("--data", required=True, help="dataset folder (its test split is used)")
    p.add_argument("--out", required=True, help="report folder")
    add_options(p, SteerConfig, ["horizon", "samples"])
    add_option(p, SteerConfig, "max_episodes", "--episodes")
    add_options(p, SteerConfig, ["weight", "lift", "tolerance", "seed", "device"])
    add_option(p, SteerConfig, "progress", "--quiet", help="no progress bars")
    p.set_defaults(func=run_steer)


def run_steer(args: argparse.Namespace) -> int:
    """:func:`trajebm.steer.steer` with the options' config; print the summary table."""
    cfg = config_from(SteerConfig, args)
    report = steer(args.models, args.data, args.out, cfg)
    print(steer_markdown(report["summary"], cfg, len(args.models)))
    print(f"wrote {Path(args.out) / 'steer.json'}")
    return 0
