"""``imagebm classify`` (the conditional EBM as a classifier) and ``imagebm ood`` (energy as an
out-of-distribution score)."""

from __future__ import annotations

import argparse
from pathlib import Path

from imagebm.classify import ClassifyConfig, classify_report
from imagebm.cli.common import (
    add_data_root,
    add_device,
    add_out,
    add_quiet,
    add_reference,
    add_run,
)
from imagebm.ood import ood_to_folder
from trajebm.cli.options import add_options, config_from


def run_classify(args: argparse.Namespace) -> int:
    cfg = config_from(ClassifyConfig, args)
    report = classify_report(args.run, cfg.langevin_steps, cfg.samples, args.reference,
                             args.data_root, args.device, progress=not args.quiet, out=args.out)
    print(f"{report['dataset']} test, {report['test_images']} images")
    for steps, acc in report["ebm_accuracy"].items():
        print(f"  EBM, argmin_y E(x, y), {steps:>3} Langevin steps: {acc:.4f}")
    print(f"  softmax reference (same backbone):          {report['softmax_accuracy']:.4f}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def run_ood(args: argparse.Namespace) -> int:
    _, table = ood_to_folder(args.run, args.out, ood_files=tuple(args.ood_data),
                             reference=args.reference, data_root=args.data_root, seed=args.seed,
                             device=args.device, progress=not args.quiet)
    out = Path(args.out)
    print(table, end="")
    print(f"wrote {out / 'ood.json'}, {out / 'ood.md'} and {out / 'ood.png'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``imagebm classify`` and ``imagebm ood``."""
    p = subparsers.add_parser("classify", help="test accuracy of a conditional EBM as a "
                              "classifier beside a softmax classifier of the same backbone")
    add_run(p, "conditional run folder from `imagebm train`")
    add_options(p, ClassifyConfig, ["langevin_steps", "samples"])
    add_reference(p)
    add_data_root(p)
    add_out(p, "also write the report to this JSON file", required=False)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=run_classify)

    q = subparsers.add_parser("ood", help="out-of-distribution detection by energy (AUROC)")
    add_run(q)
    add_out(q)
    q.add_argument("--ood-data", nargs="+", default=[], metavar="FILE.npy",
                   help="extra OOD sets: float arrays (N, C, H, W) in [0, 1]")
    add_reference(q)
    add_data_root(q)
    q.add_argument("--seed", type=int, default=0, help="seed of the generated OOD sets")
    add_device(q)
    add_quiet(q)
    q.set_defaults(func=run_ood)
