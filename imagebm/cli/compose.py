"""``imagebm compose`` (sample a sum of conditional runs' energies) and ``imagebm
compose-experiment`` (compositional generalisation on procedural dSprites)."""

from __future__ import annotations

import argparse
from pathlib import Path

from imagebm.cli.common import add_device, add_out, add_quiet
from imagebm.compose import (
    COMPOSITION_PRESETS,
    ComposeConfig,
    CompositionConfig,
    compose_to_folder,
    compositional_generalisation,
)
from trajebm.cli.options import add_option, add_options, config_from


def run_compose(args: argparse.Namespace) -> int:
    cfg = config_from(ComposeConfig, args)
    out, images = compose_to_folder(args.runs, args.labels, args.out, cfg, args.device)
    print(f"wrote {len(images)} composed samples to {out / 'samples.npy'} and "
          f"{out / 'samples.png'}")
    return 0


def run_experiment(args: argparse.Namespace) -> int:
    sampler = ComposeConfig(langevin_steps=args.langevin_steps, seed=args.seed)
    cfg = config_from(CompositionConfig, args, sampler=sampler)
    compositional_generalisation(args.out, cfg, args.device, progress=not args.quiet)
    print(Path(args.out, "report.md").read_text())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``imagebm compose`` and ``imagebm compose-experiment``."""
    p = subparsers.add_parser("compose", help="sample the sum of conditional runs' energies")
    p.add_argument("--runs", nargs="+", required=True, help="run folders from `imagebm train`")
    p.add_argument("--labels", nargs="+", type=int, required=True,
                   help="one class per run, conditioning that run")
    add_out(p)
    add_option(p, ComposeConfig, "num")
    add_option(p, ComposeConfig, "langevin_steps", "--langevin-steps", "--steps")
    add_options(p, ComposeConfig, ["grad_clip", "temperature", "seed"])
    add_device(p)
    p.set_defaults(func=run_compose)

    q = subparsers.add_parser("compose-experiment",
                              help="compositional generalisation on procedural dSprites")
    add_out(q, "experiment folder (finished runs are reused, interrupted ones continue)")
    add_options(q, CompositionConfig, ["steps", "num"])
    add_option(q, ComposeConfig, "langevin_steps", "--langevin-steps", "--chain-steps",
               help="Langevin steps per sample (default: as `imagebm compose`)")
    add_option(q, CompositionConfig, "preset", choices=list(COMPOSITION_PRESETS))
    add_option(q, CompositionConfig, "seed")
    add_option(q, CompositionConfig, "classifier_seed")
    add_device(q)
    add_quiet(q, "no progress bars")
    q.set_defaults(func=run_experiment)
