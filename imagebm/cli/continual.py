"""``imagebm continual``: class-incremental split digits / MNIST, the conditional EBM against
fine-tuning, EWC, SI, LwF, generative replay and joint training."""

from __future__ import annotations

import argparse
from pathlib import Path

from imagebm.cli.common import add_out, add_quiet
from imagebm.continual import RESULT_FILE, ContinualConfig, report_markdown, run_continual
from trajebm.cli.options import add_options, config_from


def run_continual_command(args: argparse.Namespace) -> int:
    report = run_continual(config_from(ContinualConfig, args), args.out, progress=not args.quiet)
    print(report_markdown(report))
    print(f"wrote {Path(args.out) / RESULT_FILE}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``imagebm continual``."""
    p = subparsers.add_parser("continual", help="class-incremental split digits / MNIST: the "
                              "conditional EBM against finetune, EWC, SI, LwF, generative replay "
                              "and joint")
    add_options(p, ContinualConfig, ["preset", "methods", "seeds"])
    add_out(p, "report folder")
    add_options(p, ContinualConfig, [
        "classes_per_task", "steps", "batch_size", "lr", "width", "ebm_loss", "ce_weight",
        "ebm_negatives", "ebm_train", "ewc_lambda", "ewc_gamma", "si_c", "lwf_alpha",
        "lwf_temperature", "vae_steps", "vae_hidden", "vae_latent", "replay_targets",
        "data_root", "device"])
    add_quiet(p)
    p.set_defaults(func=run_continual_command)
