"""Quality: do samples from noise match the persistent chains, or collapse to one per class?

What: for one run, domain FID (with its floor), label accuracy and per-class diversity of
(a) the paper's evaluation sampler from noise (``SampleConfig.paper()``: 20 chunks of 20 steps
over 10 snapshots, temperature 1), (b) the current defaults from noise (``SampleConfig()``)
and (c) the newest persistent chains of the replay buffer (``start="buffer", chunks=0``).

Why: at temperature 1 the chains from noise fall into one image per class; the defaults raise
the temperature (``imagebm.sample.SAMPLE_TEMPERATURE``).

Method: ``imagebm.evaluate.score_samples``; diversity is the per-class mean pairwise L2
distance of the samples (``imagebm.sample.class_diversity``) divided by that of held-out data of
the same size. Prints a markdown table.

Run: ``.venv/bin/python benchmarks/quality_fresh_samples.py --run runs/digits --num 359``
(~2 min for digits, ~4 min for dsprites-16 with ``--num 500``, on 1 CPU thread).
"""

from __future__ import annotations

import argparse

import torch

from imagebm.evaluate import _split, classifier_factor, score_samples
from imagebm.sample import SampleConfig, class_diversity, sample_images
from imagebm.train import load_image_run


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a finished `imagebm train` run")
    p.add_argument("--num", type=int, default=359, help="samples per sampler")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    run = load_image_run(args.run)
    cfg = run.config
    data = _split(cfg, None, "test", args.num, 0, classifier_factor(cfg))
    data_diversity = class_diversity(data.float(), data.labels)
    samplers = {
        "paper (noise, 10 snapshots, 20 x 20 steps, T = 1)":
            SampleConfig.paper(num=args.num, seed=args.seed),
        f"defaults (noise, final weights, {SampleConfig().chunks} chunks, "
        f"T = {SampleConfig().temperature:g})": SampleConfig(num=args.num, seed=args.seed),
        "replay buffer (persistent chains)":
            SampleConfig(num=args.num, start="buffer", chunks=0),
    }
    print(f"{args.run}: {cfg.dataset}, {args.num} samples; data diversity "
          f"{data_diversity:.3f}\n")
    print("| samples | domain FID (floor) | label accuracy | diversity / data's |")
    print("|---|---|---|---|")
    for name, sampler in samplers.items():
        images, labels, _ = sample_images(run, sampler, progress=False)
        scores = score_samples(images, cfg, labels=labels, progress=False)
        accuracy = scores["model"].get("label_accuracy")
        print(f"| {name} | {scores['model']['fid']:.1f} ({scores['floor']['fid']:.1f}) | "
              f"{'-' if accuracy is None else f'{accuracy:.2f}'} | "
              f"{class_diversity(images, labels) / data_diversity:.2f} |", flush=True)


if __name__ == "__main__":
    main()
