"""`trajebm demo`: collect a hand dataset, train EBMs and baselines, evaluate, report."""

from __future__ import annotations

import argparse
from pathlib import Path

from trajebm.cli.options import add_option, add_options, config_from
from trajebm.demo import DEFAULT_OUT, DemoConfig, run_demo
from trajebm.evaluate import markdown_table


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``trajebm demo``."""
    p = subparsers.add_parser("demo", help="collect, train EBMs + baselines, evaluate, report")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    add_options(p, DemoConfig, ["episodes", "length", "ebm_steps", "baseline_steps", "samples",
                                "seed", "workers", "device"])
    add_option(p, DemoConfig, "render", "--no-render", help="skip the rendered frame strip")
    add_option(p, DemoConfig, "progress", "--quiet", help="no progress bars")
    p.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    """:func:`trajebm.demo.run_demo` with the options' config; print the results table."""
    report = run_demo(args.out, config_from(DemoConfig, args))
    print(markdown_table(report["summary"]))
    print(f"wrote {Path(args.out) / 'report' / 'README.md'} in {report['timings']['total']:.0f} s")
    return 0
