"""Quality: accuracy under PGD of the EBM classifier and its softmax reference, across seeds.

What: reads the ``robustness.json`` of ``imagebm robustness`` runs, one folder per seed (both
norms may sit in one file), and for every norm and every ε that all seeds share prints the
median accuracy over seeds with a 95% bootstrap interval for the softmax reference, the EBM
and the Langevin-refined EBM (its worst case over direct PGD and transfer), and the
probability that the refined EBM beats the softmax classifier (rliable's estimator).

Why: docs/paper.md §3 claims the refined EBM is more robust than a standard classifier at large ε;
a claim that one model beats another holds across seeds, not on one.

Run: ``.venv/bin/python benchmarks/quality_robustness.py --reports runs/rob/s{0..4}
--out benchmarks/results/robustness-digits`` (reads JSON only: seconds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from trajebm.engine.runinfo import write_json
from trajebm.engine.stats import median_interval, probability_of_improvement

ROWS = {"softmax": "softmax reference", "ebm": "EBM, argmin energy",
        "ebm_refined_worst": "EBM, 10 Langevin steps (worst of PGD and transfer)"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reports", nargs="+", required=True, help="robustness folders, one a seed")
    p.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    return p.parse_args()


def curves(report: dict) -> dict[str, dict[float, float]]:
    """Accuracy per ε of each row of :data:`ROWS` in one norm's report."""
    acc = dict(report["accuracy"])
    acc["ebm_refined_worst"] = report["guards"]["transfer"]["worst_accuracy"]
    return {k: dict(zip(report["eps"], acc[k], strict=True)) for k in ROWS}


def main() -> None:
    args = parse_args()
    reports = [json.loads((Path(r) / "robustness.json").read_text()) for r in args.reports]
    lines, record = [f"{len(reports)} seeds; accuracy under PGD, median [95% bootstrap interval "
                     "over seeds]; P = probability that the refined EBM beats the softmax "
                     "classifier"], {}
    for norm in ("linf", "l2"):
        per_seed = [curves(r[norm]) for r in reports if norm in r]
        if len(per_seed) < len(reports):
            continue
        eps = sorted(set.intersection(*(set(c["softmax"]) for c in per_seed)))
        lines += ["", f"| {norm} ε | " + " | ".join(f"{e:g}" for e in eps) + " |",
                  "|---" * (len(eps) + 1) + "|"]
        record[norm] = {"eps": eps}
        for key, label in ROWS.items():
            values = [[c[key][e] for e in eps] for c in per_seed]
            cells = []
            for i in range(len(eps)):
                iv = median_interval(np.asarray(values)[:, i:i + 1])
                cells.append(f"{iv.value:.2f} [{iv.low:.2f}, {iv.high:.2f}]")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
            record[norm][key] = values
        poi = [probability_of_improvement([c["ebm_refined_worst"][e] for c in per_seed],
                                          [c["softmax"][e] for c in per_seed],
                                          lower_is_better=False) for e in eps]
        lines.append("| P(refined EBM > softmax) | " + " | ".join(
            f"{p.value:.2f} [{p.low:.2f}, {p.high:.2f}]" for p in poi) + " |")
        record[norm]["poi"] = [p.as_dict() for p in poi]
    table = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), {"reports": args.reports, **record})
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
