"""Continual-learning variants over seeds: final accuracy, medians and P(improvement).

What: reads the ``continual.json`` of several ``imagebm continual`` reports (one per recipe
variant, e.g. the EBM's ``--ebm-negatives seen`` beside its default) and prints, for every
method of every report, the final accuracy on all classes per seed, the median over seeds with
a 95% bootstrap interval, and the probability that one of its runs ends higher than one of the
reference row's (over all pairs of runs, with a bootstrap interval).

Why: a recipe option counts as a gain only if it holds across >= 5 seeds, not on seed 0.

Run: ``.venv/bin/python benchmarks/quality_continual.py default=runs/A seen=runs/B
--reference default/ebm``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from trajebm.engine.stats import median_interval, probability_of_improvement
from trajebm.evaluate import format_interval


def finals(spec: str, incomplete: bool = False) -> dict[str, np.ndarray]:
    """``LABEL=DIR`` → {"LABEL/method": per-seed final accuracy in %}; a report whose seeds
    have not all finished is refused unless ``incomplete`` (then its finished seeds count)."""
    label, sep, folder = spec.partition("=")
    if not sep:
        raise SystemExit(f"expected LABEL=DIR, got {spec!r}")
    report = json.loads((Path(folder) / "continual.json").read_text())
    if not (report.get("complete", False) or incomplete):
        raise SystemExit(f"{folder}: the report is incomplete (a run still going or stopped; "
                         f"--incomplete uses its finished seeds)")
    return {f"{label}/{m}": 100 * np.asarray(v["final_accuracy"]["per_seed"])
            for m, v in report["methods"].items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="LABEL=DIR, DIR holding continual.json")
    p.add_argument("--reference", required=True, help="LABEL/method the others are compared to")
    p.add_argument("--incomplete", action="store_true",
                   help="use the finished seeds of reports whose run stopped early")
    args = p.parse_args()
    rows: dict[str, np.ndarray] = {}
    for spec in args.reports:
        rows.update(finals(spec, args.incomplete))
    if args.reference not in rows:
        raise SystemExit(f"--reference {args.reference!r} not among {', '.join(rows)}")
    ref = rows[args.reference]
    print(f"| variant | final per seed (%) | median [95% interval] | P(higher than "
          f"{args.reference}) |\n|---|---|---|---|")
    for name, v in rows.items():
        poi = None if name == args.reference else \
            probability_of_improvement(v, ref, lower_is_better=False).as_dict()
        print(f"| {name} | {', '.join(f'{x:.1f}' for x in v)} | "
              f"{format_interval(median_interval(v[:, None]).as_dict())} | "
              f"{format_interval(poi)} |")


if __name__ == "__main__":
    main()
