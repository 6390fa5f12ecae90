"""Two jobs sharing the cores: a small model's Langevin chains, torch's defaults vs trajebm's.

What: Langevin steps/s of the default trajectory EBM (``ebm-proposal``, 3 x 128 MLP, 256
chains, 20 steps per ``propose``) in one process alone and in each of two processes running
at once, under three thread settings: "before" (torch's defaults: one OpenMP thread per core,
the OpenMP runtime's default spin-waiting), one thread per core with passive waits
(``OMP_WAIT_POLICY=PASSIVE``), and "after" (what the ``trajebm``/``imagebm`` command lines now
do: :func:`trajebm.engine.threads.configure_threads`, one thread per process).

Why: on a shared machine spinning OpenMP threads of two jobs fight for the cores and small
models slow down 10-100x; passive waits avoid that but make the second thread a loss.

Method: each setting starts fresh worker processes (this script with ``--worker``) that time
``propose`` for ``--seconds`` after a warm-up and print their rate; "two jobs" start two at
once and report the mean of their rates.

Run: ``.venv/bin/python benchmarks/bench_threads.py`` (about 1 minute; ``--model small`` or
``--model resnet32`` times an imagebm net's chains instead).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

SETTINGS = {
    "before: torch defaults (1 thread per core, spin-waiting)": ("before", {}),
    "1 thread per core, passive waits": ("after", {"TRAJEBM_THREADS": str(os.cpu_count()),
                                                    "OMP_WAIT_POLICY": "PASSIVE"}),
    "after: trajebm default (1 thread per process)": ("after", {}),
}


def chain(model_name: str):
    """``(run, langevin steps per run)`` for the model being timed."""
    import torch

    torch.manual_seed(0)
    if model_name == "trajectory":
        from trajebm.models import build_model, model_config

        model = build_model(model_config("ebm", state_dim=31, action_dim=20, proposal=True,
                                        init_noise=0.1))
        cond = torch.randn(256, model.config.cond_dim)
        return lambda: model.propose(cond), model.config.sampler.steps
    from imagebm.models import ImageEBMConfig, build_model
    from trajebm.engine.sampling import langevin

    size, channels, batch, width = IMAGE_MODELS[model_name]
    net = build_model(ImageEBMConfig(arch=model_name, image_size=size, channels=channels,
                                     width=width)).eval()
    x = torch.rand(batch, channels, size, size)
    return lambda: langevin(net, x, steps=5), 5


IMAGE_MODELS = {"small": (8, 1, 128, 16), "resnet32": (32, 3, 32, 64)}
"""imagebm archs timed with ``--model``: (image size, channels, batch, width); digits-like
small conv net and the CIFAR-10 ResNet32."""


def worker(mode: str, seconds: float, model_name: str) -> None:
    """Time the chains and print Langevin steps/s and the thread count (one line)."""
    import torch

    if mode == "after":
        from trajebm.engine.threads import configure_threads

        configure_threads()
    run, steps = chain(model_name)
    run()
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run()
        calls += 1
    rate = calls * steps / (time.perf_counter() - t0)
    print(f"{rate:.1f} {torch.get_num_threads()} {os.environ.get('OMP_WAIT_POLICY', '-')}")


def run_jobs(mode: str, env: dict[str, str], jobs: int, seconds: float,
             model_name: str = "trajectory") -> tuple[float, str, str]:
    """Mean steps/s of ``jobs`` workers started together, their threads and wait policy."""
    full = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "TRAJEBM_THREADS")}
    full.update(env)
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", mode, "--seconds",
                               str(seconds), "--model", model_name], env=full,
                              stdout=subprocess.PIPE, text=True)
             for _ in range(jobs)]
    lines = [p.communicate()[0].split() for p in procs]
    rates = [float(line[0]) for line in lines]
    return sum(rates) / len(rates), lines[0][1], lines[0][2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per worker")
    p.add_argument("--model", default="trajectory", choices=["trajectory", *IMAGE_MODELS],
                   help="trajectory: ebm-proposal, 256 chains; small / resnet32: imagebm nets")
    p.add_argument("--worker", choices=["before", "after"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.seconds, args.model)
        return
    what = "ebm-proposal propose, 256 chains"
    if args.model != "trajectory":
        size, channels, batch, _ = IMAGE_MODELS[args.model]
        what = f"imagebm {args.model}, {channels}x{size}x{size} images, batch {batch}"
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} before the run; {what}\n")
    print("| setting | threads | OMP_WAIT_POLICY | alone: steps/s | two jobs: steps/s each | "
          "slowdown |")
    print("|---|---:|---|---:|---:|---:|")
    for name, (mode, env) in SETTINGS.items():
        alone, threads, policy = run_jobs(mode, env, 1, args.seconds, args.model)
        shared, _, _ = run_jobs(mode, env, 2, args.seconds, args.model)
        print(f"| {name} | {threads} | {policy} | {rate(alone)} | {rate(shared)} | "
              f"{alone / shared:.1f}x |", flush=True)


def rate(steps_per_s: float) -> str:
    """Steps/s with three significant digits (image nets run a few steps per second)."""
    return f"{steps_per_s:,.0f}" if steps_per_s >= 100 else f"{steps_per_s:.3g}"


if __name__ == "__main__":
    main()
