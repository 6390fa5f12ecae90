"""Langevin-dynamics throughput: trajebm's sampler vs a bare autograd loop vs torchebm.

What: samples x steps per second of ``trajebm.engine.sampling.langevin`` (textbook and paper
conventions, plus the paper convention with gradient clipping and bounds as in the image
defaults), of a ~15-line autograd loop, and of ``torchebm.samplers.LangevinDynamics``, on
the same energy module and the same starting tensor, for an MLP energy and a small conv
energy.

Why: the sampler is the inner loop of EBM training; its per-step bookkeeping (config
handling, shape checks, clipping, bounds) must cost next to nothing against the forward and
backward pass of the energy. The bare loop is the reference: absolute numbers depend on the
machine, so we report ratios measured in the same run.

Method: every implementation runs the same number of steps from the same starting tensor;
the textbook-equivalent chains are seeded identically, so their final states must agree
(checked and printed). After warm-up runs, ``--repeats`` timed rounds run every implementation
once (rotating the order each round). Throughput is from the median time; the ratio vs the
bare loop is the median over rounds of the within-round time ratio, which is more robust to
other work on the machine. The conv energy runs 20 steps by default to fit the time budget.

Run: ``.venv/bin/python benchmarks/bench_langevin.py`` (about 2-3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from trajebm.engine.sampling import LangevinConfig, langevin


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="Langevin steps (MLP energies)")
    p.add_argument("--conv-steps", type=int, default=20, help="Langevin steps (conv energy)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per implementation")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs per implementation (the first is the sanity check)")
    p.add_argument("--mlp-batch", type=int, default=256)
    p.add_argument("--mlp-dim", type=int, default=64)
    p.add_argument("--mlp-hidden", type=int, nargs="+", default=[64, 256])
    p.add_argument("--conv-batch", type=int, default=64)
    p.add_argument("--eta", type=float, default=0.01, help="textbook step size")
    p.add_argument("--no-torchebm", action="store_true", help="skip the torchebm rows")
    p.add_argument("--only", choices=["mlp", "conv"], default=None, help="one energy family")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


# ---------------------------------------------------------------- energies: (B, ...) -> (B,)
class MLPEnergy(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.net(x).squeeze(-1)


class ConvEnergy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU(),
        )
        self.head = nn.Linear(64, 1)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.head(self.net(x).sum(dim=(2, 3))).squeeze(-1)


# ---------------------------------------------------------------- reference: a bare loop
def bare_langevin(energy: nn.Module, x: Tensor, steps: int, eta: float) -> Tensor:
    """x <- x - (eta/2) grad E(x) + sqrt(eta) eps, the textbook update, nothing else."""
    noise = math.sqrt(eta)
    x = x.detach()
    for _ in range(steps):
        x.requires_grad_()
        e = energy(x).sum()
        g = torch.autograd.grad(e, x)[0]
        x = (x - eta / 2 * g + noise * torch.randn_like(x)).detach()
    return x


# ---------------------------------------------------------------- torchebm adapter
def make_torchebm_runner(energy: nn.Module, eta: float) -> Callable[[Tensor, int], Tensor]:
    """torchebm's update is x - h grad + sqrt(2 h D) eps with D = noise_scale**2:
    h = eta/2 and noise_scale = 1 give exactly the textbook chain."""
    from torchebm.core import BaseModel
    from torchebm.samplers import LangevinDynamics

    class Wrapped(BaseModel):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)

    sampler = LangevinDynamics(Wrapped(energy), step_size=eta / 2, noise_scale=1.0)

    def run(x: Tensor, steps: int) -> Tensor:
        # defaults: no trajectory, no diagnostics, thin=1 -> only the final state is kept
        return sampler.sample(x=x, n_steps=steps)

    return run


def implementations(energy: nn.Module, eta: float, use_torchebm: bool
                    ) -> dict[str, Callable[[Tensor, int], Tensor]]:
    """name -> run(x0, steps). Textbook-equivalent ones are marked with a trailing '*'."""
    lam, sigma = eta / 2, math.sqrt(eta)  # paper convention equivalent of textbook eta, T=1
    plain = dict(grad_clip=None, bounds=None)
    textbook = LangevinConfig(step_size=eta, convention="textbook", **plain)
    paper = LangevinConfig(step_size=lam, noise=sigma, convention="paper", **plain)
    image = LangevinConfig()  # paper convention, CIFAR-10 defaults: clip 0.01, bounds (0, 1)
    impls: dict[str, Callable[[Tensor, int], Tensor]] = {
        "bare loop*": lambda x, n: bare_langevin(energy, x, n, eta),
        "trajebm textbook*": lambda x, n: langevin(energy, x, config=textbook, steps=n),
        "trajebm paper": lambda x, n: langevin(energy, x, config=paper, steps=n),
        "trajebm paper+clip+bounds": lambda x, n: langevin(energy, x, config=image, steps=n),
    }
    if use_torchebm:
        impls["torchebm LangevinDynamics*"] = make_torchebm_runner(energy, eta)
    return impls


def bench(name: str, energy: nn.Module, x0: Tensor, steps: int, args: argparse.Namespace
          ) -> list[tuple[str, str, float, float]]:
    impls = implementations(energy, args.eta, not args.no_torchebm)
    names = list(impls)
    # sanity: textbook-equivalent chains with the same seed end in the same state
    finals = {}
    for impl in names:
        torch.manual_seed(args.seed)
        finals[impl] = impls[impl](x0, steps)
        assert finals[impl].shape == x0.shape and torch.isfinite(finals[impl]).all(), impl
    for impl in names:
        if impl.endswith("*") and impl != "bare loop*":
            diff = (finals[impl] - finals["bare loop*"]).abs().max().item()
            print(f"  [{name}] max |x_{impl.rstrip('*')} - x_bare| = {diff:.2e}")
            assert diff < 1e-3, f"{impl} does not run the same chain as the bare loop"
    for _ in range(args.warmup - 1):
        for impl in names:
            impls[impl](x0, steps)
    times: dict[str, list[float]] = {impl: [] for impl in names}
    for r in range(args.repeats):
        for impl in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
            torch.manual_seed(args.seed + r)
            t0 = time.perf_counter()
            impls[impl](x0, steps)
            times[impl].append(time.perf_counter() - t0)
    rows = []
    for impl in names:
        med = statistics.median(times[impl])
        spread = (max(times[impl]) - min(times[impl])) / med
        # paired ratio: bare-loop time / this time within the same round, median over rounds;
        # robust to slow drifts in machine load that hit a whole round
        pairs = zip(times["bare loop*"], times[impl], strict=True)
        ratio = statistics.median([b / t for b, t in pairs])
        print(f"  [{name}] {impl:<28} median {med * 1e3:8.1f} ms  (max-min {spread:5.1%})")
        rows.append((impl.rstrip("*"), name, x0.shape[0] * steps / med, ratio))
    return rows


def main() -> None:
    args = parse_args()
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (default), "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.2f} (other work on the machine skews results)")
    rows: list[tuple[str, str, float, float]] = []
    if args.only in (None, "mlp"):
        x0 = torch.randn(args.mlp_batch, args.mlp_dim)
        for hidden in args.mlp_hidden:
            energy = MLPEnergy(args.mlp_dim, hidden)
            label = f"MLP {args.mlp_dim}-{hidden}-{hidden}-1, B={args.mlp_batch}, {args.steps} st"
            rows += bench(label, energy, x0, args.steps, args)
    if args.only in (None, "conv"):
        x0 = torch.rand(args.conv_batch, 3, 32, 32)
        label = f"conv 3-32-64-64 s2, 32x32x3, B={args.conv_batch}, {args.conv_steps} st"
        rows += bench(label, ConvEnergy(), x0, args.conv_steps, args)

    print()
    print(f"Langevin throughput, {datetime.date.today().isoformat()}, torch {torch.__version__},"
          f" {torch.get_num_threads()} threads, median of {args.repeats}")
    print()
    print("| implementation | energy | samples·steps/s | ratio vs bare loop |")
    print("|---|---|---:|---:|")
    for impl, energy, sps, ratio in rows:
        print(f"| {impl} | {energy} | {sps:,.0f} | {ratio:.3f} |")
    print(f"\ntotal time {time.perf_counter() - t_start:.0f} s, "
          f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
