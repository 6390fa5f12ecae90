"""`trajebm` console script: a thin argparse layer over the library's public functions.

Each subcommand lives beside the code it drives and exposes ``add_parser(subparsers)``,
which registers the subcommand and sets ``func(args) -> int | None`` as its default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from trajebm.engine.console import add_threads_option, run_command

SUBCOMMAND_MODULES = (
    "trajebm.toy",
    "trajebm.data.cli",
    "trajebm.fit",
    "trajebm.rollout",
    "trajebm.evaluate",
    "trajebm.compare",
    "trajebm.steer",
    "trajebm.demo",
)


def build_parser() -> argparse.ArgumentParser:
    """The full `trajebm` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="trajebm",
        description="Energy-based models trained by Langevin dynamics (trajectories, toys).",
    )
    add_threads_option(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
