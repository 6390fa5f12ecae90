"""Quality: do samples from noise match the persistent chains, or collapse to one per class?

What: for runs of one preset (one per seed), domain FID (with its floor), label accuracy and
per-class diversity of (a) the run's own fresh-sample sampler from noise (``SampleConfig()``:
10 chunks at temperature 1000 for persistent runs, one training chain for short-run runs),
(b) the newest chains of its replay buffer (``start="buffer", chunks=0``) and, with
``--paper``, (c) the paper's evaluation sampler (``SampleConfig.paper()``: 20 chunks of 20
steps over 10 snapshots, temperature 1). With ``--references`` (persistent runs of the same
preset, one per seed) also their buffers and fresh samples, the medians over seeds with 95%
bootstrap intervals, and the ratio of the runs' fresh-sample FID to the references' buffer FID
(the issue's target: at most 1.5).

Why: on persistent runs chains from noise fall into one image per class at temperature 1;
the temperature of their defaults (``imagebm.train.SAMPLE_TEMPERATURE``) keeps them diverse but
noisy; short-run runs (``imagebm.train.short_run``) are trained so that their chain from noise
lands on the data.

Method: ``imagebm.evaluate.score_samples``; diversity is the per-class mean pairwise L2
distance of the samples (``imagebm.sample.class_diversity``) divided by that of held-out data of
the same size. Prints a markdown table.

Run: ``.venv/bin/python benchmarks/quality_fresh_samples.py --runs runs/digits-shortrun-s{0,1,2}
--references runs/digits-s{0,1,2} --num 359`` (~1 min per run for digits, ~2 min for
dsprites-16 with ``--num 500``, on 1 CPU thread). With ``--cache FILE.jsonl`` each run's scores
are appended there and reused by later calls (same run, sampler, ``--num`` and ``--seed``), so
seeds can be scored as they finish and the table printed over all of them at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from jsonl_cache import JsonlCache

from imagebm.evaluate import classifier_factor, score_samples, scoring_split
from imagebm.sample import SampleConfig, class_diversity, sample_images
from imagebm.train import ImageRun, load_image_run
from trajebm.engine.stats import median_interval, probability_of_improvement


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="finished runs, one per seed")
    p.add_argument("--references", nargs="*", default=[],
                   help="persistent runs of the same preset, one per seed")
    p.add_argument("--num", type=int, default=359, help="samples per sampler")
    p.add_argument("--paper", action="store_true", help="also the paper's sampler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=None,
                   help="JSON lines of scored runs: reused, new ones appended")
    return p.parse_args()


def score(run: ImageRun, sampler: SampleConfig, data_diversity: float) -> dict[str, float]:
    """Domain FID and floor, label accuracy, diversity relative to the data's."""
    images, labels, _ = sample_images(run, sampler, progress=False)
    scores = score_samples(images, run.config, labels=labels, progress=False)
    return {"fid": scores["model"]["fid"], "floor": scores["floor"]["fid"],
            "accuracy": scores["model"].get("label_accuracy", float("nan")),
            "diversity": class_diversity(images, labels) / data_diversity}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    runs = [load_image_run(r) for r in args.runs]
    references = [load_image_run(r) for r in args.references]
    cfg = runs[0].config
    data = scoring_split(cfg, None, "test", args.num, 0, classifier_factor(cfg))
    data_diversity = class_diversity(data.float(), data.labels)
    own = SampleConfig(num=args.num, seed=args.seed)
    buffer = SampleConfig(num=args.num, start="buffer", chunks=0)
    kinds = [("fresh", own), ("buffer", buffer)] + (
        [("paper", SampleConfig.paper(num=args.num, seed=args.seed))] if args.paper else [])
    cache = JsonlCache(args.cache)
    rows: dict[str, list[dict[str, float]]] = {}
    for group, members in (("run", runs), ("reference", references)):
        for kind, sampler in kinds:
            for run in members:
                row = cache.get(f"{run.path}|{kind}|{args.num}|{args.seed}",
                                lambda r=run, s=sampler: score(r, s, data_diversity))
                rows.setdefault(f"{group} {kind}", []).append(row)
    s = SampleConfig().resolve(cfg)
    print(f"{cfg.dataset}, {args.num} samples per run; runs: {', '.join(args.runs)} (replay_prob "
          f"{cfg.contrastive.replay_prob}; fresh = {s.chunks} x {s.chunk_steps} steps, T = "
          f"{s.temperature:g}); references: {', '.join(args.references) or 'none'}\n")
    print("| samples | domain FID per seed | median [95% interval] | floor | label accuracy | "
          "diversity / data's |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for name, values in rows.items():
        fid = np.array([v["fid"] for v in values])
        med = medians[name] = median_interval(fid[:, None])
        print(f"| {name} | {', '.join(f'{x:.1f}' for x in fid)} | {med.value:.1f} "
              f"[{med.low:.1f}, {med.high:.1f}] | {np.median([v['floor'] for v in values]):.1f} "
              f"| {np.median([v['accuracy'] for v in values]):.2f} | "
              f"{np.median([v['diversity'] for v in values]):.2f} |", flush=True)
    if references:
        print(f"\nmedian fresh-sample FID of the runs / median buffer FID of the references: "
              f"{medians['run fresh'].value / medians['reference buffer'].value:.2f} "
              f"(target <= 1.5)")
        fresh = [v["fid"] for v in rows["run fresh"]]
        for other in ("reference fresh", "reference buffer"):
            poi = probability_of_improvement(fresh, [v["fid"] for v in rows[other]])
            print(f"P(run fresh has the lower FID than {other}, across seeds) = "
                  f"{poi.value:.2f} [{poi.low:.2f}, {poi.high:.2f}]")


if __name__ == "__main__":
    main()
