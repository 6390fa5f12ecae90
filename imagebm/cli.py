"""`imagebm` console script: a thin argparse layer over the image experiments' public functions.

Subcommands: ``train`` (:func:`imagebm.train.train_images`), ``sample``
(:func:`imagebm.sample.sample_images`), ``score`` (:func:`imagebm.evaluate.score_samples`),
``classify`` / ``ood`` / ``robustness`` / ``continual`` (the classification experiments),
``restore`` (:func:`imagebm.restore.restore`), ``coverage`` (:func:`imagebm.coverage.coverage`),
``compose`` and ``compose-experiment`` (:func:`imagebm.compose.compose_images`,
:func:`imagebm.compose.compositional_generalisation`), ``likelihood``
(:func:`imagebm.likelihood.image_likelihood`) and ``download``
(:func:`imagebm.download.download`). Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from imagebm import (
    classify,
    compose,
    continual,
    coverage,
    download,
    evaluate,
    likelihood,
    ood,
    restore,
    robustness,
    sample,
    train,
)
from trajebm.engine.console import add_threads_option, run_command

SUBCOMMANDS = (train, sample, evaluate, classify, ood, robustness, continual, restore, coverage,
               compose, likelihood, download)


def build_parser() -> argparse.ArgumentParser:
    """The full `imagebm` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="imagebm",
        description="Image EBMs of Du & Mordatch (2019) on trajebm's sampler and trainer.",
    )
    add_threads_option(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
