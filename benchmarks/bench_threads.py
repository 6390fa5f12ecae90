"""Two jobs sharing the cores: a small model's Langevin chains, torch's defaults vs trajebm's.

What: Langevin steps/s of the default trajectory EBM (``ebm-proposal``, 3 x 128 MLP, 256
chains, 20 steps per ``propose``) in one process alone and in each of two processes running
at once, under two thread settings: "before" (torch's defaults: one OpenMP thread per core,
the OpenMP runtime's default spin-waiting) and "after" (what the ``trajebm``/``imagebm``
command lines now do: ``OMP_WAIT_POLICY=PASSIVE`` set by ``import trajebm`` before torch
loads, and :func:`trajebm.engine.threads.configure_threads`: cores / local processes), plus
one thread per job (``--threads 1`` / ``TRAJEBM_THREADS=1``) for reference.

Why: on a shared machine spinning OpenMP threads of two jobs fight for the cores and small
models slow down 10-50x.

Method: each setting starts fresh worker processes (this script with ``--worker``) that time
``propose`` for ``--seconds`` after a warm-up and print their rate; "two jobs" start two at
once and report the mean of their rates.

Run: ``.venv/bin/python benchmarks/bench_threads.py`` (about 1 minute).
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
    "before: torch defaults (spin-waiting, 1 thread per core)": ("before", {}),
    "after: passive waits, cores / local processes": ("after", {}),
    "after, --threads 1": ("after", {"TRAJEBM_THREADS": "1"}),
}


def worker(mode: str, seconds: float) -> None:
    """Time ``propose`` and print steps/s and the thread count (one line)."""
    if mode == "before":
        import torch  # first: trajebm then leaves OpenMP's wait policy alone

        import trajebm  # noqa: F401
    else:
        import trajebm  # noqa: F401  - first: makes OpenMP waits passive
        from trajebm.engine.threads import configure_threads

        configure_threads()
        import torch
    from trajebm.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="ebm", state_dim=31, action_dim=20, proposal=True,
                                    init_noise=0.1))
    cond = torch.randn(256, model.config.cond_dim)
    model.propose(cond)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.propose(cond)
        calls += 1
    rate = calls * model.config.sampler.steps / (time.perf_counter() - t0)
    print(f"{rate:.1f} {torch.get_num_threads()} {os.environ.get('OMP_WAIT_POLICY', '-')}")


def run_jobs(mode: str, env: dict[str, str], jobs: int, seconds: float
             ) -> tuple[float, str, str]:
    """Mean steps/s of ``jobs`` workers started together, their threads and wait policy."""
    full = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "TRAJEBM_THREADS")}
    full.update(env)
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", mode, "--seconds",
                               str(seconds)], env=full, stdout=subprocess.PIPE, text=True)
             for _ in range(jobs)]
    lines = [p.communicate()[0].split() for p in procs]
    rates = [float(line[0]) for line in lines]
    return sum(rates) / len(rates), lines[0][1], lines[0][2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per worker")
    p.add_argument("--worker", choices=["before", "after"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.seconds)
        return
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} before the run; ebm-proposal propose, 256 chains\n")
    print("| setting | threads | OMP_WAIT_POLICY | alone: steps/s | two jobs: steps/s each | "
          "slowdown |")
    print("|---|---:|---|---:|---:|---:|")
    for name, (mode, env) in SETTINGS.items():
        alone, threads, policy = run_jobs(mode, env, 1, args.seconds)
        shared, _, _ = run_jobs(mode, env, 2, args.seconds)
        print(f"| {name} | {threads} | {policy} | {alone:,.0f} | {shared:,.0f} | "
              f"{alone / shared:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
