"""Running an argparse command line: the one place a :class:`UsageError` becomes exit status 2.

Both console scripts (``trajebm``, ``imagebm``) build their parser from subcommand modules and
hand it here, so every bad input ends in one ``PROG: error: ...`` line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trajebm.engine.errors import UsageError


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv``, run the chosen command, and map :class:`UsageError` to exit status 2."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
