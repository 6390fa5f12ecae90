"""Quality: the conditional EBM as a classifier and OOD detector, across seeds.

What: for every run given (one per seed of one preset), test accuracy of the EBM classifier
(argmin_y E(x, y), plain and after Langevin refinement) and of its softmax reference (same
backbone, data and budget, seeded like the run), and the OOD AUROC of every score on every
generated set (``imagebm ood``); then the median over seeds with a 95% bootstrap interval over
seeds, and the probability that an EBM score beats each softmax score on a set (rliable's
estimator over (EBM run, reference run) pairs).

Why: docs/paper.md §3 claims energy is a useful OOD score and the conditional EBM a classifier; a
claim that one score beats another holds across seeds, not on one.

Run: ``.venv/bin/python benchmarks/quality_classification.py --runs runs/digits-s{0..4}
--out benchmarks/results/classification-digits`` (~1 min per run on 2 CPU cores, plus the
reference's training the first time). With ``--cache FILE.jsonl`` each run's measurement is
appended there and reused by later calls (same run and refinement length), so seeds can be
scored as they finish and the table printed over all of them at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from jsonl_cache import JsonlCache

from imagebm.classify import classify_report
from imagebm.ood import ood_report
from trajebm.engine.runinfo import write_json
from trajebm.engine.stats import median_interval, probability_of_improvement

EBM_SCORES = ("ebm-min", "ebm-lse")
REFERENCE_SCORES = ("softmax-msp", "softmax-energy")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="run folders, one per seed")
    p.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    p.add_argument("--langevin-steps", type=int, default=10, help="refinement length scored")
    p.add_argument("--cache", type=Path, default=None,
                   help="JSON lines of measured runs: reused, new ones appended")
    return p.parse_args()


def interval(values: list[float]) -> str:
    i = median_interval(np.asarray(values)[:, None])
    return f"{i.value:.3f} [{i.low:.3f}, {i.high:.3f}]"


def measure(run: str, steps: tuple[int, int]) -> dict[str, dict]:
    """One run's accuracies (EBM plain and refined, softmax reference) and OOD AUROCs."""
    cls = classify_report(run, steps, progress=False)
    accuracy = {f"EBM, {k} Langevin steps": v for k, v in cls["ebm_accuracy"].items()}
    accuracy["softmax reference"] = cls["softmax_accuracy"]
    report, _ = ood_report(run, progress=False)
    auroc = {score: {name: value["auroc"] for name, value in per_set.items()}
             for score, per_set in report["scores"].items()}
    return {"accuracy": accuracy, "auroc": auroc}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    steps = (0, args.langevin_steps)
    acc: dict[str, list[float]] = {}
    auc: dict[str, dict[str, list[float]]] = {}
    cache = JsonlCache(args.cache)
    for run in args.runs:
        row = cache.get(f"{run}|{args.langevin_steps}", lambda run=run: measure(run, steps))
        for k, v in row["accuracy"].items():
            acc.setdefault(k, []).append(v)
        for score, per_set in row["auroc"].items():
            for name, value in per_set.items():
                auc.setdefault(score, {}).setdefault(name, []).append(value)
        print(f"{run}: accuracy " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in acc.items()))
    sets = list(next(iter(auc.values())))
    lines = [f"{len(args.runs)} seeds; median [95% bootstrap interval over seeds]", "",
             "| classifier | test accuracy |", "|---|---|"]
    lines += [f"| {k} | {interval(v)} |" for k, v in acc.items()]
    lines += ["", "OOD AUROC (higher score = more in-distribution)", "",
              "| score | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    lines += [f"| {score} | " + " | ".join(interval(per[s]) for s in sets) + " |"
              for score, per in auc.items()]
    poi = {}
    lines += ["", "P(EBM score beats reference score) per set [95% interval]", "",
              "| EBM vs reference | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    for e in (s for s in EBM_SCORES if s in auc):
        for r in (s for s in REFERENCE_SCORES if s in auc):
            cells = []
            for s in sets:
                p = probability_of_improvement(auc[e][s], auc[r][s], lower_is_better=False)
                poi[f"{e} vs {r}/{s}"] = p.as_dict()
                cells.append(f"{p.value:.2f} [{p.low:.2f}, {p.high:.2f}]")
            lines.append(f"| {e} vs {r} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), {"runs": args.runs, "accuracy": acc, "auroc": auc,
                                          "probability_of_improvement": poi})
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
