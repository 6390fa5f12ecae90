"""Trainer and rollout throughput on a GPU: eager vs compiled vs CUDA graphs.

What: steps/s of ``Trainer.train_step`` for the trajectory EBM (``ebm-proposal``, batch 256)
and for an imagebm preset's model (default ``cifar10-cond``: ResNet32, batch 128, 60 Langevin
steps), and predicted states/s of ``predict_rollouts`` for the trajectory EBM, each with the
chains eager, compiled (``compile=True``) and compiled with CUDA graphs
(``compile="reduce-overhead"``), written as a markdown table.

Why: on a GPU the small trajectory MLP is bound by kernel launches, which CUDA graphs remove;
the ResNet is bound by its convolutions, where compilation gains less.

Method: synthetic data; one warm-up call per path (compilation and graph capture happen
there), then the median of ``--rounds`` rounds of ``--steps`` calls. Without CUDA it runs on
the CPU (graphs skipped), e.g. ``--batch-size 8 --langevin-steps 2 --steps 1`` to check it.

Run: ``.venv/bin/python benchmarks/bench_cuda.py --out benchmarks/results/cuda.md``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch
from bench_image_train import bench_preset
from bench_train import matmul_flops, sync, trajectory_trainer

from imagebm.models import build_model as build_image_model
from imagebm.train import contrastive_objective
from imagebm.train import model_config as image_model_config
from trajebm.engine.train import TensorBatches, TrainConfig, Trainer
from trajebm.models import build_model, model_config
from trajebm.rollout import predict_rollouts


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="cifar10-cond", help="imagebm preset")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch")
    p.add_argument("--width", type=int, default=None, help="override the preset's width")
    p.add_argument("--langevin-steps", type=int, default=None, help="override its chain")
    p.add_argument("--traj-batch", type=int, default=256)
    p.add_argument("--horizon", type=int, default=96, help="rollout steps")
    p.add_argument("--steps", type=int, default=5, help="calls per timed round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="write the markdown table here too")
    return p.parse_args()


def timed(fn, steps: int, rounds: int, device: torch.device) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def image_trainer(args: argparse.Namespace, out: str, device: torch.device,
                  compile: bool | str) -> tuple[Trainer, str]:
    cfg = bench_preset(args)
    cfg = replace(cfg, sampler=replace(cfg.sampler, compile=compile))
    m = cfg.model
    classes = 10 if cfg.conditional else 0
    shape = (m.channels, m.image_size, m.image_size)
    n = 4 * cfg.batch_size
    images = torch.rand((n, *shape))
    labels = torch.randint(max(classes, 1), (n,)) if classes else None
    torch.manual_seed(0)
    model = build_image_model(image_model_config(cfg, classes))
    objective = contrastive_objective(model, cfg, shape, bool(classes))
    tcfg = TrainConfig(steps=10**9, lr=cfg.train.lr, progress=False)
    label = (f"{args.preset} {m.arch}, batch {cfg.batch_size}, "
             f"{cfg.sampler.steps} Langevin steps")
    return Trainer(model, TensorBatches(images, labels, cfg.batch_size), objective, tcfg, out,
                   device), label


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    modes: dict[str, bool | str] = {"eager": False, "compiled": True}
    if device.type == "cuda":
        modes["compiled + CUDA graphs"] = "reduce-overhead"
    rows: list[tuple[str, str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, mode in modes.items():
            trainer = trajectory_trainer(f"{tmp}/t{name}", device, args.traj_batch, mode)
            sec = timed(trainer.train_step, args.steps, args.rounds, device)
            rows.append((f"trajectory EBM trainer (ebm-proposal, batch {args.traj_batch})",
                         name, 1 / sec, "steps/s"))
        torch.manual_seed(0)
        model = build_model(model_config("ebm", proposal=True, init_noise=0.1))
        rng = np.random.default_rng(0)
        context = rng.standard_normal((16, 4, 31)).astype(np.float32)
        actions = rng.standard_normal((16, args.horizon, 20)).astype(np.float32)
        for name, mode in modes.items():
            sec = timed(lambda m=mode: predict_rollouts(model, context, actions, args.horizon,
                                                        16, seed=0, device=device, compile=m),
                        1, args.rounds, device)
            rows.append(("trajectory EBM rollouts (256 particles, 20 Langevin steps/state)",
                         name, 256 * args.horizon / sec, "states/s"))
        for name, mode in modes.items():
            trainer, label = image_trainer(args, f"{tmp}/i{name}", device, mode)
            sec = timed(trainer.train_step, args.steps, args.rounds, device)
            rows.append((f"image EBM trainer ({label})", name, 1 / sec, "steps/s"))
    peak = matmul_flops(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"{datetime.date.today()}, {gpu}, torch {torch.__version__}, float32 2048^3 "
             f"matmul {peak / 1e12:.2f} TFLOP/s", "",
             "| workload | chains | throughput | vs eager |", "|---|---|---:|---:|"]
    eager = {}
    for workload, name, rate, unit in rows:
        eager.setdefault(workload, rate)
        lines.append(f"| {workload} | {name} | {rate:,.1f} {unit} | "
                     f"{rate / eager[workload]:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
