"""docs/cli.md is the parsers' own help, and every command-line module stays a thin layer."""

from __future__ import annotations

import ast
from pathlib import Path

from trajebm.cli.reference import markdown

ROOT = Path(__file__).resolve().parents[1]


def test_the_command_reference_is_current():
    current = (ROOT / "docs" / "cli.md").read_text()
    assert current == markdown(), (
        "docs/cli.md is out of date: run `.venv/bin/python -m trajebm.cli.reference > "
        "docs/cli.md`")


def test_no_library_module_parses_a_command_line():
    """argparse lives in trajebm/cli and imagebm/cli only."""
    offenders = []
    for folder in ("trajebm", "imagebm", "envs", "data"):
        for path in (ROOT / folder).rglob("*.py"):
            if "cli" in path.relative_to(ROOT).parts:
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if "argparse" in names:
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
