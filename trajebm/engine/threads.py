"""CPU thread counts that do not oversubscribe the machine: one torch thread per process.

Small models run many tiny kernels. When two processes share the cores and each runs as many
OpenMP threads as there are cores, the threads spin-wait for each other and every step takes
6-100x longer (``benchmarks/bench_threads.py``: the trajectory EBM's chains fell from 2,174 to
334, in another run to 21, Langevin steps/s each). Passive waits (``OMP_WAIT_POLICY=PASSIVE``)
avoid the collapse but make a second thread cost more than it gives for small nets (712 steps/s
alone). One thread per process is 9% (trajectory EBM) to 28% (the digits net) slower than two
spinning threads alone and does not slow down when another job shares the cores, so it is the
command lines' default; under ``torchrun`` every rank is a process of its own, so one thread
each fills the cores.

Large convolutional nets (the CIFAR-10 ResNets) do gain from more threads on a machine of your
own (1.9x with two): ``trajebm --threads N ...`` / ``imagebm --threads N ...``, or the
environment variables ``TRAJEBM_THREADS`` (ours) or ``OMP_NUM_THREADS`` (honoured as torch
does); add ``OMP_WAIT_POLICY=PASSIVE`` when the machine is shared.
"""

from __future__ import annotations

import os

import torch

THREADS_ENV = "TRAJEBM_THREADS"
"""Environment variable naming the torch thread count of the command lines."""

DEFAULT_THREADS = 1
"""The command lines' torch intra-op threads per process (module docstring)."""


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads and return the count.

    ``threads`` wins; else ``$TRAJEBM_THREADS``; else a user's ``$OMP_NUM_THREADS`` is left
    as torch applied it; else :data:`DEFAULT_THREADS`. ValueError for a count below 1.
    """
    if threads is None and os.environ.get(THREADS_ENV):
        try:
            threads = int(os.environ[THREADS_ENV])
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a whole number, got "
                             f"{os.environ[THREADS_ENV]!r}") from None
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        threads = DEFAULT_THREADS
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
