"""``imagebm train`` (a preset, or a spec ``NAME:key=value,...``) and ``imagebm presets``."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from imagebm.cli.common import add_data_root, add_device, add_out, add_quiet
from imagebm.presets import PRESETS, ImageTrainConfig
from imagebm.train import MODEL_FILE, train_images
from trajebm.cli.options import add_option, given
from trajebm.engine.settings import parse_spec
from trajebm.engine.train import TrainConfig

OVERRIDES = ("steps", "batch_size", "lr", "seed")
"""The options that change the preset's settings."""


def run_train(args: argparse.Namespace) -> int:
    name, overrides = parse_spec(args.preset)
    overrides.update(given(args, OVERRIDES))
    if args.short_run:
        overrides["short_run"] = True
    cfg = PRESETS.get(name, overrides, where=args.preset)
    train_images(cfg, args.out, args.data_root, args.device, resume=args.resume,
                 progress=not args.quiet)
    print(f"wrote {Path(args.out) / MODEL_FILE}")
    return 0


def run_presets(args: argparse.Namespace) -> int:
    print(f"Each preset is a complete {ImageTrainConfig.__name__}; listed with what it changes "
          f"against the default one (`imagebm train --preset NAME:key=value,...` changes more).")
    for name, changes in PRESETS.describe().items():
        text = ", ".join(f"{key}={value}" for key, value in changes.items()) or "(the default)"
        print(f"\n{name}\n" + textwrap.fill(text, 100, initial_indent="    ",
                                            subsequent_indent="    "))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``imagebm train`` and ``imagebm presets``."""
    p = subparsers.add_parser("train", help="train an image EBM from a preset")
    p.add_argument("--preset", required=True, metavar="NAME[:key=value,...]",
                   help=f"a preset, optionally with changed settings (e.g. "
                        f"digits:lr=0.003,sampler.steps=20; `imagebm presets` lists them): "
                        f"{', '.join(PRESETS)}")
    add_data_root(p, "folder holding the dataset files (not needed for digits, mnist5k, "
                     "dsprites-16, dsprites-32)")
    add_out(p, "run folder")
    add_option(p, TrainConfig, "steps", override=True)
    add_option(p, ImageTrainConfig, "batch_size", override=True)
    add_option(p, TrainConfig, "lr", override=True)
    add_option(p, TrainConfig, "seed", override=True)
    p.add_argument("--short-run", action="store_true",
                   help="train by short-run chains from noise (no replay) and sample fresh "
                        "images with that chain (presets *-shortrun)")
    add_device(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_quiet(p)
    p.set_defaults(func=run_train)
    q = subparsers.add_parser("presets", help="list the presets and what each changes")
    q.set_defaults(func=run_presets)
