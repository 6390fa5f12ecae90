"""``imagebm likelihood``: AIS bounds on the test log-likelihood (bits/dim) of an image EBM."""

from __future__ import annotations

import argparse
from pathlib import Path

from imagebm.cli.common import add_data_root, add_device, add_out, add_run
from imagebm.likelihood import LikelihoodConfig, likelihood_to_folder
from trajebm.cli.options import add_option, add_options, config_from


def run_likelihood(args: argparse.Namespace) -> int:
    cfg = config_from(LikelihoodConfig, args)
    report = likelihood_to_folder(args.run, args.out, cfg, data_root=args.data_root,
                                  device=args.device)
    print(f"{report['dataset']} test, {report['test_images']} images, "
          f"{report['dimensions']} dimensions (uniform: 8.000 bits/dim)")
    for part in ("unconditional", "conditional", "marginal"):
        if part in report:
            b = report[part]["bits_per_dim"]
            high = "n/a" if b["upper"] is None else f"{b['upper']:.3f}"
            print(f"  {part:<13} bits/dim {b['estimate']:.3f} (bounds {b['lower']:.3f} .. "
                  f"{high})")
    print(f"wrote {Path(args.out) / 'likelihood.json'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``imagebm likelihood``."""
    p = subparsers.add_parser("likelihood", help="AIS bounds on the test log-likelihood "
                              "(bits/dim) of an image EBM")
    add_run(p)
    add_out(p, "folder for likelihood.json and run.json")
    add_options(p, LikelihoodConfig, ["num", "chains"])
    add_option(p, LikelihoodConfig, "ais_steps", "--ais-steps", "--steps")
    add_options(p, LikelihoodConfig, ["leapfrog_steps", "init_std"])
    add_data_root(p)
    add_option(p, LikelihoodConfig, "seed")
    add_device(p)
    p.set_defaults(func=run_likelihood)
