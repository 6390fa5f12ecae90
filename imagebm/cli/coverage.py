"""``imagebm coverage``: train vs test energies, nearest training neighbours of samples, class
coverage."""

from __future__ import annotations

import argparse

from imagebm.cli.common import add_data_root, add_device, add_out, add_quiet, add_run
from imagebm.coverage import CoverageConfig, coverage_to_folder
from imagebm.sample import SampleConfig
from trajebm.cli.options import add_option, add_options, config_from


def run_coverage(args: argparse.Namespace) -> int:
    sampler = SampleConfig.paper(num=args.num, chunks=args.chunks, seed=args.seed)
    cfg = config_from(CoverageConfig, args, sample=sampler)
    out, result = coverage_to_folder(args.run, args.out, cfg, samples_file=args.samples,
                                     data_root=args.data_root, device=args.device,
                                     progress=not args.quiet)
    e, nn = result.metrics["energies"], result.metrics["nearest_neighbours"]
    print(f"energies ({result.metrics['energy']}), {e['n']} images per split: train "
          f"{e['train_mean']:.3f} ± {e['train_std']:.3f}, test {e['test_mean']:.3f} ± "
          f"{e['test_std']:.3f}; overlap {e['histogram_overlap']:.3f}, KS {e['ks_statistic']:.3f}")
    print(f"nearest training image (RMS): samples {nn['sample_median_rms']:.4f}, test "
          f"{nn['test_median_rms']:.4f}; near copies {nn['near_copy_fraction']:.3f}")
    classes = result.metrics["classes"]
    if isinstance(classes, dict):
        print(f"classes covered: samples {classes['samples']['covered']:.2f}, test "
              f"{classes['test_floor']['covered']:.2f}")
    print(f"wrote {out / 'coverage.json'}, {out / 'energies.png'} and {out / 'neighbours.png'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``imagebm coverage``."""
    drawn = CoverageConfig().sample
    p = subparsers.add_parser("coverage", help="train vs test energy histograms, nearest "
                              "training neighbours of samples, class coverage")
    add_run(p)
    add_out(p)
    p.add_argument("--samples", default=None,
                   help="samples.npy (or its folder) to check; default: sample --num of them")
    add_option(p, SampleConfig, "num", default=drawn.num,
               help=f"samples to draw (default: {drawn.num})")
    add_option(p, SampleConfig, "chunks", default=drawn.chunks,
               help=f"sampling chunks (default: {drawn.chunks})")
    add_options(p, CoverageConfig, ["neighbours", "show", "seed"])
    add_data_root(p)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=run_coverage)
