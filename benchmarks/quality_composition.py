"""Compositional generalisation over seeds: composed experts vs the jointly conditioned model.

What: reads the ``report.json`` of ``imagebm compose-experiment`` runs (one folder per seed)
and prints, for the held-out and the seen factor combinations, each seed's fraction of samples
with every requested factor right, the median over seeds with a 95% bootstrap interval, and
the probability that composition beats the joint model on the held-out combinations, and each
factor classifier's accuracy on real test images (reports written before it was recorded
have none).

Why: a claim that one method beats another holds across >= 5 seeds, never one lucky seed.

Run: ``.venv/bin/python benchmarks/quality_composition.py DIR/seed0 DIR/seed1 ...``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from trajebm.engine.stats import median_interval, probability_of_improvement


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="compose-experiment folders, one per seed")
    args = p.parse_args()
    reports = [json.loads((run / "report.json").read_text()) for run in args.runs]
    print(f"{len(reports)} seeds; chance of all factors right {reports[0]['chance']:.3f}\n")
    print("| combinations | method | per seed | median [95% interval] |")
    print("|---|---|---|---|")
    values = {}
    for split in ("held_out", "seen"):
        for method in ("composed", "joint", "test data"):
            v = np.array([r["summary"][split][method] for r in reports])
            values[split, method] = v
            med = median_interval(v[:, None])
            print(f"| {split.replace('_', ' ')} | {method} | "
                  f"{', '.join(f'{x:.2f}' for x in v)} | {med.value:.2f} [{med.low:.2f}, "
                  f"{med.high:.2f}] |")
    poi = probability_of_improvement(values["held_out", "composed"],
                                     values["held_out", "joint"], lower_is_better=False)
    print(f"\nP(composed beats joint on the held-out combinations, across seeds) = "
          f"{poi.value:.2f} [{poi.low:.2f}, {poi.high:.2f}]")
    checks = [r["classifiers"]["accuracy"] for r in reports if "classifiers" in r]
    for factor in checks[0] if checks else ():
        print(f"{factor} classifier's accuracy on real test images, per seed: "
              f"{', '.join(f'{c[factor]:.3f}' for c in checks)}")


if __name__ == "__main__":
    main()
