"""The `trajebm` console script: one thin argparse layer over the library's public functions.

Each module here registers its subcommands (``register(subparsers)``) and sets ``func(args)``
on them; options come from the config dataclasses (:mod:`trajebm.cli.options`). No library
module parses a command line, and none imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from trajebm.cli.options import console_parser, run_command

COMMANDS = ("toy", "data", "train", "rollout", "evaluate", "compare", "steer", "demo", "plan")
"""The modules of :mod:`trajebm.cli`, in the order ``trajebm --help`` lists their commands."""


def build_parser() -> argparse.ArgumentParser:
    """The full `trajebm` parser with every subcommand registered."""
    return console_parser(
        "trajebm", "Energy-based models trained by Langevin dynamics (trajectories, toys).",
        [importlib.import_module(f"trajebm.cli.{name}").register for name in COMMANDS])


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
