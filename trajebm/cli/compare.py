"""`trajebm compare`: train and score model variants over seeds; medians with intervals."""

from __future__ import annotations

import argparse
from pathlib import Path

from trajebm.cli.options import add_option, add_options, config_from
from trajebm.compare import CompareConfig, compare, scores_summary_markdown, summary_markdown
from trajebm.evaluate import EvalConfig
from trajebm.variants import VARIANTS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``trajebm compare``."""
    p = subparsers.add_parser(
        "compare", help="train and score model variants over seeds; medians with intervals")
    p.add_argument("--data", required=True, help="dataset folder (from `trajebm collect`)")
    p.add_argument("--models", nargs="+", required=True,
                   help=f"variants NAME[:key=value,...]; NAME: {' '.join(VARIANTS)}")
    p.add_argument("--out", required=True, help="report folder")
    add_options(p, CompareConfig, ["seeds"])
    add_option(p, CompareConfig, "base", type=str, default=None, metavar="SETTINGS",
               help="settings every variant starts from, key=value,... (e.g. steps=1000; "
                    "NAME:key=value,... as before, each variant keeping its own settings)")
    add_options(p, EvalConfig, ["horizon", "samples"])
    add_option(p, EvalConfig, "max_episodes", "--episodes")
    add_options(p, CompareConfig, ["resamples", "jobs"])
    add_options(p, EvalConfig, ["device"])
    p.add_argument("--resume", action="store_true",
                   help="continue the comparison in --out (the same data and settings; more "
                   "variants or seeds are fine)")
    add_option(p, EvalConfig, "progress", "--quiet", help="no progress bars")
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    """:func:`trajebm.compare.compare` with the options' configs; print the summary."""
    scoring = config_from(EvalConfig, args, plots=False, render=False)
    cfg = config_from(CompareConfig, args, base=args.base or {}, eval=scoring)
    summary = compare(args.data, args.models, args.out, cfg, resume=args.resume)
    print(summary_markdown(summary))
    print(scores_summary_markdown(summary))
    print(f"wrote {Path(args.out) / 'summary.md'}")
    return 0
