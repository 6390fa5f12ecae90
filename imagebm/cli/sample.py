"""``imagebm sample`` (fresh samples of a run) and ``imagebm score`` (FID / IS of samples)."""

from __future__ import annotations

import argparse
import json

from imagebm.cli.common import add_data_root, add_device, add_out, add_quiet, add_run
from imagebm.evaluate import score_to_file
from imagebm.sample import SampleConfig, sample_to_folder
from trajebm.cli.options import add_option, add_options, config_from

GIF_FRAMES = 64
"""Images per frame of ``chain.gif`` with ``--gif``."""


def run_sample(args: argparse.Namespace) -> int:
    cfg = config_from(SampleConfig, args, gif_frames=GIF_FRAMES if args.gif else 0)
    out, num = sample_to_folder(args.run, args.out, cfg, args.device, progress=not args.quiet)
    print(f"wrote {num} samples to {out / 'samples.npy'} and {out / 'samples.png'}")
    return 0


def run_score(args: argparse.Namespace) -> int:
    result, path = score_to_file(args.run, args.samples, args.out, args.data_root,
                                 args.inception, progress=not args.quiet)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``imagebm sample`` and ``imagebm score``."""
    p = subparsers.add_parser("sample", help="generate images from a trained run")
    add_run(p)
    add_option(p, SampleConfig, "num")
    add_out(p)
    add_options(p, SampleConfig, ["start", "chunks", "chunk_steps", "ensemble", "temperature",
                                  "labels"])
    p.add_argument("--gif", action="store_true", help="also write chain.gif")
    add_option(p, SampleConfig, "seed")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=run_sample)

    q = subparsers.add_parser("score", help="FID / IS (or domain scores) of a run's samples")
    add_run(q, "run folder (for its dataset and image size)")
    q.add_argument("--samples", required=True, help="samples.npy or the folder holding it")
    add_data_root(q)
    q.add_argument("--inception", default=None,
                   help="pytorch-fid Inception weight file (natural-image datasets only)")
    add_out(q, "scores file (default: beside the samples)", required=False)
    add_quiet(q)
    q.set_defaults(func=run_score)
