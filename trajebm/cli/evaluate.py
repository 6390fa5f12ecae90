"""`trajebm evaluate`: FD, MSE, physics error and proper scores of trained models on their test
split."""

from __future__ import annotations

import argparse
from pathlib import Path

from trajebm.cli.options import add_option, add_options, config_from
from trajebm.evaluate import EvalConfig, evaluate, markdown_table, scores_markdown


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``trajebm evaluate``."""
    p = subparsers.add_parser(
        "evaluate", help="FD / MSE / physics error / proper scores of trained models")
    p.add_argument("--data", required=True, help="dataset folder (its test split is used)")
    p.add_argument("--models", nargs="+", required=True, help="run folders of `trajebm train`")
    p.add_argument("--out", required=True, help="report folder")
    add_options(p, EvalConfig, ["horizon", "samples"])
    add_option(p, EvalConfig, "max_episodes", "--episodes")
    add_options(p, EvalConfig, ["langevin_steps", "seed", "device"])
    add_option(p, EvalConfig, "render", "--no-render", help="skip the rendered frame strip")
    add_option(p, EvalConfig, "progress", "--quiet", help="no progress bars")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """:func:`trajebm.evaluate.evaluate` with the options' config; print the summary table and
    the proper scores per start."""
    report = evaluate(args.data, args.models, args.out, config_from(EvalConfig, args))
    print(markdown_table(report["summary"]))
    print("\nProper scores per start (z units; mean over starts [95% bootstrap interval]):\n")
    print(scores_markdown({name: r["scores"] for name, r in report["models"].items()}))
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0
