"""Trajectory-EBM training throughput: eager vs compiled Langevin chains in the shared Trainer.

What: ``Trainer.train_step`` steps/s for the default trajectory model (variant
``ebm-proposal`` of ``trajebm.fit``: a 3 x 128 MLP energy with a regression head, batch 256, 20
Langevin steps per step) with three chain paths: the model's forward at every Langevin step
(the regression head recomputed each step, as before ``chain_energy``), the eager default
(``chain_energy``: head and the condition's share of the first layer computed once per chain),
and the same compiled (``TrainConfig.compile``). Also the achieved FLOP/s (matrix products
counted on an eager step) against a large float32 matmul's in the same run.

Why: the chain's 20 forward+backward passes of a small MLP dominate a step; their Python,
autograd and small-GEMM overhead is what compilation and hoisting remove.

Method: synthetic z-scored data of the hand's sizes (31 states, 20 actions, k = 4); one
warm-up step per path (the compiled path compiles there, timed separately), then ``--rounds``
rounds of ``--steps`` steps per path in rotating order; rates from the median round, ratios
the median of within-round ratios.

Run: ``.venv/bin/python benchmarks/bench_train.py`` (about 1 minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trajebm.engine.sampling import langevin
from trajebm.engine.train import Contrastive, TensorBatches, Trainer
from trajebm.fit import objective
from trajebm.models import build_model
from trajebm.variants import variant_config


class HeadEveryStep(Contrastive):
    """The chains as they ran before ``chain_energy``: the model's forward at every step."""

    def _chains(self, x, cond, kl):
        return langevin(self.model, x, cond, self.sampler, keep_last_graph=kl)


def trajectory_trainer(out: str, device: torch.device, batch: int, compile: bool | str = False,
                       objective_class: type[Contrastive] = Contrastive,
                       spec: str = "ebm-proposal") -> Trainer:
    """A trainer as ``trajebm train --model SPEC`` builds it, on synthetic data of the hand's
    sizes (no dataset needed), without checkpoints or validation."""
    cfg = variant_config(spec)
    mcfg = replace(cfg.model, state_dim=31, action_dim=20,
                   sampler=replace(cfg.model.sampler, compile=compile))
    torch.manual_seed(0)
    model = build_model(mcfg)
    n = 8 * batch
    gen = torch.Generator().manual_seed(0)
    x, cond = torch.randn(n, mcfg.out_dim, generator=gen), torch.randn(n, mcfg.cond_dim,
                                                                      generator=gen)
    made = objective(model)
    made = objective_class(model, made.sampler, made.buffer, made.config, made.aux_loss)
    tcfg = replace(cfg.train, progress=False, validate_every=0, select_by=None, steps=10**9)
    return Trainer(model, TensorBatches(x, cond, batch), made, tcfg, out, device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n float32 matmul (best of ``repeats``): the machine's matmul rate."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


class _MatmulFlops(TorchDispatchMode):
    """Counts the FLOPs of matrix products (2 m n k each); they are the work that counts."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "bmm", "baddbmm"):
            a, b = args[-2], args[-1]
            self.flops += 2 * a.numel() * b.shape[-1]
        elif name == "convolution":
            weight = args[1]
            self.flops += 2 * out.numel() * weight[0].numel()
        return out


def step_flops(fn) -> int:
    """Matmul (and convolution forward) FLOPs of one eager call of ``fn``."""
    with _MatmulFlops() as counter:
        fn()
    return counter.flops


def time_paths(paths: dict, steps: int, rounds: int, device: torch.device
               ) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per call of each path and its median within-round speed-up over the
    first path."""
    times: dict[str, list[float]] = {k: [] for k in paths}
    names = list(paths)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                paths[name]()
            sync(device)
            times[name].append((time.perf_counter() - t0) / steps)
    ref = times[names[0]]
    ratio = {k: statistics.median([a / b for a, b in zip(ref, v, strict=True)])
             for k, v in times.items()}
    return {k: statistics.median(v) for k, v in times.items()}, ratio


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="training steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            "eager, head at every Langevin step (before)":
                trajectory_trainer(f"{tmp}/a", device, args.batch, objective_class=HeadEveryStep),
            "eager (default)": trajectory_trainer(f"{tmp}/b", device, args.batch),
            "compiled (compile=true)": trajectory_trainer(f"{tmp}/c", device, args.batch, True),
        }
        flops = {}
        for name, trainer in trainers.items():
            t0 = time.perf_counter()
            trainer.train_step()
            first = time.perf_counter() - t0
            if "compiled" in name:
                print(f"compiled path: first step (compilation) {first:.1f} s")
                flops[name] = flops["eager (default)"]
            else:
                flops[name] = step_flops(trainer.train_step)
        peak = matmul_flops(device)
        sec, ratio = time_paths({k: t.train_step for k, t in trainers.items()}, args.steps,
                                args.rounds, device)
    print(f"\n{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, device "
          f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads, load "
          f"average {os.getloadavg()[0]:.2f}; ebm-proposal, batch {args.batch}, 20 Langevin "
          f"steps; float32 2048^3 matmul: {peak / 1e9:,.0f} GFLOP/s\n")
    print("| chains | steps/s | vs before | vs eager default | GFLOP/s | of matmul peak |")
    print("|---|---:|---:|---:|---:|---:|")
    default = ratio["eager (default)"]
    for name in trainers:
        rate = flops[name] / sec[name]
        print(f"| {name} | {1 / sec[name]:.1f} | {ratio[name]:.2f} | "
              f"{ratio[name] / default:.2f} | {rate / 1e9:.1f} | {rate / peak:.0%} |")


if __name__ == "__main__":
    main()
