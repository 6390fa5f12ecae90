"""docs/cli.md: every command's ``--help``, generated from the parsers themselves.

``python -m trajebm.cli.reference > docs/cli.md`` rewrites it; ``tests/test_cli_docs.py``
fails when it is out of date.
"""

from __future__ import annotations

from trajebm.cli import build_parser
from trajebm.cli.options import reference

HEADER = """# Command-line reference

Generated from the parsers by `python -m trajebm.cli.reference > docs/cli.md` (a test checks
that it is current). Every command is a thin layer over a public Python function; bad input
gets one line `PROG: error: ...` and exit status 2.

"""


def markdown() -> str:
    """The whole reference: `trajebm`, then `imagebm`."""
    from imagebm.cli import build_parser as image_parser

    return HEADER + reference(build_parser()) + "\n" + reference(image_parser())


if __name__ == "__main__":
    print(markdown(), end="")
