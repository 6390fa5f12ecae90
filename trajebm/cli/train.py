"""`trajebm train` (:func:`trajebm.fit.fit_model`) and `trajebm variants`
(:data:`trajebm.variants.VARIANTS`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from trajebm.cli.options import add_option, given
from trajebm.engine.settings import override
from trajebm.engine.train import TrainConfig
from trajebm.fit import FitConfig, fit_model
from trajebm.modelio import MODEL_FILE
from trajebm.variants import ALIASES, DEFAULT_MODEL, VARIANTS, describe, variant_config

OVERRIDES = ("steps", "batch_size", "lr", "seed")


def run_train(args: argparse.Namespace) -> int:
    cfg = variant_config(args.model)
    cfg = override(cfg, {**given(args, OVERRIDES), "progress": args.progress}, ALIASES)
    fit_model(args.data, args.out, cfg, args.device, resume=args.resume)
    print(f"wrote {Path(args.out) / MODEL_FILE}")
    return 0


def run_variants(args: argparse.Namespace) -> int:
    print(f"Named model variants (`--model NAME[:key=value,...]`), as differences from a plain "
          f"contrastive-divergence EBM; `trajebm train` uses {DEFAULT_MODEL} by default.")
    width = max(map(len, VARIANTS.names()))
    for name, diff in describe().items():
        text = ", ".join(f"{k}={v}" for k, v in diff.items()) or "(the plain EBM)"
        print(f"  {name:<{width}}  {text}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``trajebm train`` and ``trajebm variants``."""
    p = subparsers.add_parser("train", help="train a trajectory model (any named variant)")
    p.add_argument("--data", required=True, help="dataset folder (from `trajebm collect`)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"NAME[:key=value,...], NAME one of {' '.join(VARIANTS.names())} "
                        f"(`trajebm variants` lists them); keys are settings of the model, "
                        f"trainer or data, e.g. ebm:context_noise=0.1,sampler_steps=40")
    p.add_argument("--out", required=True, help="run folder")
    add_option(p, TrainConfig, "steps", override=True)
    add_option(p, FitConfig, "batch_size", override=True)
    add_option(p, TrainConfig, "lr", override=True)
    add_option(p, TrainConfig, "seed", override=True)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_option(p, TrainConfig, "progress", "--quiet", help="no progress bar")
    p.set_defaults(func=run_train)
    v = subparsers.add_parser("variants", help="list the named model variants and their settings")
    v.set_defaults(func=run_variants)
