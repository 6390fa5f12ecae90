"""The `imagebm` console script: one thin argparse layer over the image experiments' public
functions.

Each module here registers its subcommands (``register(subparsers)``) and sets ``func(args)``
on them; an experiment's settings are its config dataclass's fields, declared once with their
docstrings (:mod:`trajebm.cli.options`). Subcommands: ``train`` and ``presets``, ``sample``
and ``score``, ``classify`` and ``ood``, ``robustness``, ``continual``, ``restore``,
``coverage``, ``compose`` and ``compose-experiment``, ``likelihood``, ``download``. Errors
print one line and exit with status 2. No library module parses a command line, and none
imports this package.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from trajebm.cli.options import console_parser, run_command

COMMANDS = ("train", "sample", "classify", "robustness", "continual", "restore", "coverage",
            "compose", "likelihood", "download")
"""The modules of :mod:`imagebm.cli`, in the order ``imagebm --help`` lists their commands."""


def build_parser() -> argparse.ArgumentParser:
    """The full `imagebm` parser with every subcommand registered."""
    return console_parser(
        "imagebm", "Image EBMs of Du & Mordatch (2019) on trajebm's sampler and trainer.",
        [importlib.import_module(f"imagebm.cli.{name}").register for name in COMMANDS])


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``imagebm`` with ``argv`` (default: the process's); returns the exit status."""
    return run_command(build_parser(), argv)
