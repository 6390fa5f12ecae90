"""The evaluation report's summary: one row per model at the report steps, as a table."""

from __future__ import annotations

from typing import Any

import numpy as np

REPORT_STEPS = (10, 50, 96)
"""Predicted steps at which summaries give the FD (clipped to the horizon)."""


def summary_rows(results: dict[str, Any], floor: dict[str, list[float]],
                 reference: float | None) -> list[dict[str, Any]]:
    """One row per model: FD at the report steps (whole state; hand and object at the last
    one), mean MSE, spread, physics error — after a floor row."""
    def at(fd: dict[str, list[float]]) -> dict[str, float]:
        values = fd["state"]
        row = {f"fd@{t}": float(values[min(t, len(values)) - 1]) for t in REPORT_STEPS}
        last = min(REPORT_STEPS[-1], len(values))
        for group in ("hand", "object"):
            if group in fd:
                row[f"{group} fd@{last}"] = float(fd[group][last - 1])
        return row

    rows = [{"model": "train vs test (floor)", **at(floor), "mse": None, "spread": None,
             "physics_error": reference, "train_seconds": None}]
    for name, r in results.items():
        rows.append({"model": name, **at(r["fd_groups"]), "mse": float(np.mean(r["mse"])),
                     "spread": float(r["spread"][-1]),
                     "physics_error": r["physics_error"], "train_seconds": r["train_seconds"]})
    return rows


def format_value(value: Any) -> str:
    """A table cell: 3 significant digits for floats, a dash for a missing value."""
    if value is None:
        return "–"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The summary rows as a markdown table."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(format_value(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
