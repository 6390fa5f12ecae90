"""Restoration over seeds: the EBM's fill against the mean-image, nearest-neighbour and k-NN
mean fills.

What: for runs of one preset (one per training seed), ``imagebm.restore.restore`` on the same
64 test images per task (box inpainting of the bottom half, salt-and-pepper 5% + 5% with the
mask known; label not given and given), one chain and the mean of ``--chains`` chains. Prints
each seed's PSNR on the corrupted pixels, the median over seeds with a 95% bootstrap interval,
and the probability that the EBM's mean-of-chains fill beats each reference across seeds. The
k-NN mean fill (``--knn-k`` neighbours, ``RestoreConfig.knn_k``) is the nonparametric estimate
of the same posterior mean that the mean of chains estimates.

Why: the paper's restoration claim, checked against references that get the same information;
a claim that one method beats another holds across >= 5 seeds.

Run: ``.venv/bin/python benchmarks/quality_restoration.py --runs runs/digits-shortrun-s{0,1,2,3,4}``
(~20 s per run and task on 1 CPU thread). ``--tasks`` picks tasks (``inpaint-label`` is the
issue's target); with ``--cache FILE.jsonl`` each run's scores per task are appended there and
reused by later calls with the same settings, so long runs (28x28) can be scored in pieces.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from jsonl_cache import JsonlCache

from imagebm.restore import RestoreConfig, restore
from trajebm.engine.stats import median_interval, probability_of_improvement

REFERENCES = ("mean_fill", "nearest_neighbour", "knn_mean_fill")
TASKS = (("inpaint", False), ("inpaint", True), ("saltpepper", False), ("saltpepper", True))
TASK_NAMES = {f"{task}{'-label' if given else ''}": (task, given) for task, given in TASKS}


def score_run(run: str, task: str, given: bool, args: argparse.Namespace) -> dict[str, float]:
    """PSNR of the EBM (one chain, mean of chains) and of each reference fill on one run."""
    out = {}
    for chains, key in ((1, "one"), (args.chains, "mean")):
        cfg = RestoreConfig(task=task, num=args.num, given_label=given, chains=chains,
                            knn_k=args.knn_k)
        scores = restore(run, cfg, progress=False).metrics["scores"]
        out[key] = scores["ebm"]["psnr"]
    return out | {ref: scores[ref]["psnr"] for ref in REFERENCES}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="finished runs, one per seed")
    p.add_argument("--chains", type=int, default=16, help="chains averaged per image")
    p.add_argument("--num", type=int, default=64, help="test images per task")
    p.add_argument("--knn-k", type=int, default=RestoreConfig.knn_k,
                   help="neighbours averaged by the k-NN mean fill")
    p.add_argument("--tasks", nargs="+", choices=list(TASK_NAMES), default=list(TASK_NAMES))
    p.add_argument("--cache", type=Path, default=None,
                   help="JSON lines of scored runs: reused, new ones appended")
    args = p.parse_args()
    cache = JsonlCache(args.cache)
    torch.set_num_threads(1)
    print(f"runs: {', '.join(args.runs)}; {args.num} test images; PSNR (dB) on the corrupted "
          f"pixels, median over seeds [95% interval]\n")
    print(f"| task | EBM, 1 chain | EBM, mean of {args.chains} chains | mean-image fill | "
          f"nearest neighbour | mean of {args.knn_k} nearest | P(EBM mean beats mean fill) | "
          f"P(EBM mean beats neighbour) | P(EBM mean beats {args.knn_k}-NN mean) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.tasks:
        task, given = TASK_NAMES[name]
        psnr: dict[str, list[float]] = {key: [] for key in ("one", "mean", *REFERENCES)}
        for run in args.runs:
            row = cache.get(f"{run}|{name}|{args.chains}|{args.num}|{args.knn_k}",
                            lambda r=run, t=task, g=given: score_run(r, t, g, args))
            for k, v in row.items():
                psnr[k].append(v)
        cells = []
        for key in psnr:
            med = median_interval(np.array(psnr[key])[:, None])
            cells.append(f"{med.value:.2f} [{med.low:.2f}, {med.high:.2f}]")
        poi = [probability_of_improvement(psnr["mean"], psnr[ref], lower_is_better=False)
               for ref in REFERENCES]
        label = f"{task}{', label given' if given else ''}"
        print(f"| {label} | {' | '.join(cells)} | "
              f"{' | '.join(f'{x.value:.2f} [{x.low:.2f}, {x.high:.2f}]' for x in poi)} |",
              flush=True)


if __name__ == "__main__":
    main()
