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


def format_interval(entry: dict[str, float] | None) -> str:
    """A table cell of an interval: ``value [low, high]``, a dash for a missing one."""
    if entry is None:
        return "–"
    return f"{entry['value']:.3g} [{entry['low']:.3g}, {entry['high']:.3g}]"


def score_keys(scores: dict[str, Any]) -> list[str]:
    """The columns of the proper-score table: the state's ES at each report step and over the
    trajectory, its CRPS at the last step and over it, coverage, spread–skill, then the hand's
    and the object's ES over the trajectory."""
    es_steps = [k for k in scores if k.startswith("es@")]
    crps_last = [k for k in scores if k.startswith("crps@")][-1:]
    keys = [*es_steps, "es", *crps_last, "crps", "coverage50", "coverage90", "spread_skill"]
    return keys + [k for k in ("hand es", "object es") if k in scores]


def scores_markdown(scores: dict[str, dict[str, Any]]) -> str:
    """Proper scores per model (value [95% interval]) as a markdown table, with the meaning of
    one-sample forecasts' scores."""
    keys = score_keys(next(iter(scores.values())))
    lines = ["| model | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    lines += [f"| {name} | " + " | ".join(format_interval(s.get(k)) for k in keys) + " |"
              for name, s in scores.items()]
    lines += [f"\n{name}: {s['note']}." for name, s in scores.items() if s.get("note")]
    return "\n".join(lines)
