"""Bootstrap speed: Fréchet distances of resampled test sets, batched vs one pair at a time.

What: ``trajebm.engine.metrics.frechet_distance_resampled`` on a batch of bootstrap resamples
of (n, D) prediction and truth sets (moments from row counts by one matrix product), against a
loop of ``frechet_distance_samples`` (the reference: the function every other FD in the
project uses) over the same resamples.

Why: ``trajebm compare`` scores every variant x seed x report step x dimension group on
about a thousand resamples of the test starts (hundreds of thousands of FDs per report); the
interval computation must not cost more than the experiment.

Method: the hand data's shapes (500 test starts, 31 dims; 24 and 7 for the hand and object
groups); both paths get identical index arrays and are checked to agree to 1e-9 relative.
Best of ``--repeats`` timings each.

Run: ``.venv/bin/python benchmarks/bench_bootstrap.py`` (a few seconds on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from trajebm.engine.metrics import frechet_distance_resampled, frechet_distance_samples


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--starts", type=int, default=500)
    p.add_argument("--resamples", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args()


def best_time(fn, repeats: int) -> tuple[float, np.ndarray]:
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(0)
    print(f"{platform.machine()}, numpy {np.__version__}, torch {torch.__version__}, "
          f"{args.starts} starts, {args.resamples} resamples, best of {args.repeats}\n")
    print("| dims | loop of frechet_distance_samples (FDs/s) | frechet_distance_resampled (FDs/s) "
          "| speed-up |")
    print("|---:|---:|---:|---:|")
    for dims in (31, 24, 7):
        pred = rng.normal(size=(args.starts, dims))
        truth = rng.normal(0.2, 1.1, size=(args.starts, dims))
        idx = rng.integers(args.starts, size=(args.resamples, args.starts))
        loop_s, loop = best_time(lambda p=pred, t=truth, i=idx: np.array(
            [frechet_distance_samples(p[r], t[r]) for r in i]), args.repeats)
        batch_s, batch = best_time(
            lambda p=pred, t=truth, i=idx: frechet_distance_resampled(p, t, i), args.repeats)
        np.testing.assert_allclose(batch, loop, rtol=1e-9)
        n = args.resamples
        print(f"| {dims} | {n / loop_s:,.0f} | {n / batch_s:,.0f} | {loop_s / batch_s:.1f}x |")


if __name__ == "__main__":
    main()
