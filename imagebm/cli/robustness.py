"""``imagebm robustness``: accuracy under attack of a conditional EBM, refined and not, beside
its softmax reference, with guards against a weak attack."""

from __future__ import annotations

import argparse
from pathlib import Path

from imagebm.cli.common import (
    add_data_root,
    add_device,
    add_out,
    add_quiet,
    add_reference,
    add_run,
)
from imagebm.robustness import RobustnessConfig, report_table, robustness_to_folder
from trajebm.cli.options import add_option, add_options, config_from


def run_robustness(args: argparse.Namespace) -> int:
    cfg = config_from(RobustnessConfig, args)
    report = robustness_to_folder(args.run, args.out, cfg, reference=args.reference,
                                  data_root=args.data_root, device=args.device,
                                  progress=not args.quiet)
    out = Path(args.out)
    print(report_table(report))
    print(f"wrote {out / 'robustness.json'} and {out / 'robustness.png'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``imagebm robustness``."""
    p = subparsers.add_parser("robustness", help="accuracy under PGD (L-inf or L2) of a "
                              "conditional EBM, with and without Langevin refinement, beside a "
                              "softmax classifier; with checks against a weak attack")
    add_run(p, "conditional run folder from `imagebm train`")
    add_option(p, RobustnessConfig, "norm", required=True)
    add_option(p, RobustnessConfig, "eps", required=True)
    add_out(p, "folder for robustness.json, .png, run.json")
    add_options(p, RobustnessConfig, ["num", "langevin_steps", "samples", "refine_step_size"])
    add_option(p, RobustnessConfig, "pgd_steps", "--pgd-steps", "--steps")
    add_options(p, RobustnessConfig, ["restarts", "eot", "loss", "queries", "seed"])
    add_reference(p)
    add_data_root(p)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=run_robustness)
