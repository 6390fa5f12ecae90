"""`imagebm` console script (image experiments; subcommands arrive with the image issue)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="imagebm",
        description="Image EBMs of Du & Mordatch (2019), built on trajebm's sampler and trainer. "
        "No subcommands yet.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
