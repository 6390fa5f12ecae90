"""Options that several imagebm commands share: the run, the output, data root, device, quiet.

These are where a command reads and writes, not settings of an experiment (those are fields
of its config dataclass).
"""

from __future__ import annotations

import argparse

RUN_HELP = "run folder from `imagebm train`"


def add_run(parser: argparse.ArgumentParser, help: str = RUN_HELP) -> None:
    """``--run RUN``, required."""
    parser.add_argument("--run", required=True, help=help)


def add_out(parser: argparse.ArgumentParser, help: str = "output folder",
            required: bool = True) -> None:
    """``--out PATH``."""
    parser.add_argument("--out", required=required, default=None, help=help)


def add_data_root(parser: argparse.ArgumentParser,
                  help: str = "folder holding the dataset files") -> None:
    """``--data-root DIR`` (default: $IMAGEBM_DATA, else ~/.cache/imagebm)."""
    parser.add_argument("--data-root", default=None, help=help)


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device cpu | cuda``."""
    parser.add_argument("--device", default="cpu", help="cpu | cuda")


def add_quiet(parser: argparse.ArgumentParser, help: str = "no progress bar") -> None:
    """``--quiet``: no progress bars (the library functions' ``progress=False``)."""
    parser.add_argument("--quiet", action="store_true", help=help)


def add_reference(parser: argparse.ArgumentParser) -> None:
    """``--reference DIR``: the softmax reference classifier of a run."""
    parser.add_argument("--reference", default=None,
                        help="softmax reference folder (default RUN/softmax, trained if absent)")
