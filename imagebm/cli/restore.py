"""``imagebm restore``: inpainting, salt-and-pepper restoration and cross-class mapping of test
images by Langevin dynamics."""

from __future__ import annotations

import argparse
from typing import Any

from imagebm.cli.common import add_data_root, add_device, add_out, add_quiet, add_run
from imagebm.restore import RestoreConfig, restore_to_folder
from trajebm.cli.options import add_option, add_options, config_from
from trajebm.engine.settings import field_docs


def summary(metrics: dict[str, Any]) -> str:
    """The scores of ``metrics.json`` as a few lines."""
    if "scores" in metrics:
        k = metrics["config"]["knn_k"]
        lines = [f"  {name + (f' (k={k})' if name == 'knn_mean_fill' else ''):<22} "
                 f"MSE {s['mse']:.4f}  PSNR {s['psnr']:.2f} dB"
                 for name, s in metrics["scores"].items()]
        if "ebm_unmasked_mse" in metrics:
            lines.append(f"  ebm on the untouched pixels: MSE {metrics['ebm_unmasked_mse']:.4f}")
        return "\n".join(lines)
    lines = [f"  distance to source: MSE {metrics['distance_to_source']['mse']:.4f}"]
    if "target_fraction" in metrics:
        lines.append(f"  classified as the target: {metrics['target_fraction']:.3f} "
                     f"(sources: {metrics['target_fraction_of_sources']:.3f})")
    return "\n".join(lines)


def run_restore(args: argparse.Namespace) -> int:
    cfg = config_from(RestoreConfig, args)
    out, result = restore_to_folder(args.run, args.out, cfg, mask_file=args.mask,
                                    data_root=args.data_root, device=args.device,
                                    progress=not args.quiet)
    print(f"{cfg.task} on {cfg.num} test images ({result.metrics['energy']})")
    print(summary(result.metrics))
    print(f"wrote {out / 'restored.npy'}, {out / 'restore.png'} and {out / 'metrics.json'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``imagebm restore``."""
    p = subparsers.add_parser("restore", help="inpainting, salt-and-pepper restoration and "
                              "cross-class mapping of test images by Langevin dynamics")
    add_run(p)
    add_option(p, RestoreConfig, "task", required=True, help=field_docs(RestoreConfig)["task"])
    add_out(p)
    add_options(p, RestoreConfig, ["num", "chains"])
    add_option(p, RestoreConfig, "langevin_steps", "--langevin-steps", "--steps")
    add_option(p, RestoreConfig, "step_size")
    add_option(p, RestoreConfig, "box", nargs=4, metavar=("TOP", "LEFT", "HEIGHT", "WIDTH"))
    p.add_argument("--mask", default=None, metavar="FILE.npy",
                   help="inpaint: 0/1 array, 1 = fill; (H, W), (C, H, W) or (N, C, H, W)")
    add_options(p, RestoreConfig, ["blind", "given_label", "knn_k", "source", "target", "seed"])
    add_data_root(p)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=run_restore)
