"""Measurements by key in a JSON-lines file, shared by the quality scripts: a slow measurement
(a seed's scores) is computed once, appended, and reused by later calls, so seeds can be scored
as they finish and a table printed over all of them at the end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


class JsonlCache:
    """The rows of ``path`` by their ``key`` (read once); without a path nothing is kept."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self.rows = {row.pop("key"): row for row in lines}

    def get(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The row stored under ``key``, or ``compute()``'s, appended to the file first."""
        if key not in self.rows:
            self.rows[key] = compute()
            if self.path is not None:
                with self.path.open("a") as f:
                    f.write(json.dumps({"key": key, **self.rows[key]}) + "\n")
        return self.rows[key]
