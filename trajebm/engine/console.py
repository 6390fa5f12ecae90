"""Running an argparse command line: the one place a :class:`UsageError` becomes exit status 2.

Both console scripts (``trajebm``, ``imagebm``) build their parser from subcommand modules and
hand it here, so every bad input ends in one ``PROG: error: ...`` line, never a traceback.
Here, too, every command gets a thread count that does not oversubscribe the cores
(:func:`trajebm.engine.threads.configure_threads`: one per process unless ``--threads``, see
:func:`add_threads_option`, or the environment says otherwise).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trajebm.engine.errors import UsageError
from trajebm.engine.threads import THREADS_ENV, configure_threads


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """Give a console script's top-level parser ``--threads N``."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"torch CPU threads per process (default: ${THREADS_ENV}, else "
                             f"$OMP_NUM_THREADS, else 1, which never oversubscribes the cores)")


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv``, set the torch threads, run the chosen command, and map
    :class:`UsageError` to exit status 2."""
    args = parser.parse_args(argv)
    try:
        try:
            configure_threads(getattr(args, "threads", None))
        except ValueError as err:
            raise UsageError(str(err)) from None
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
