"""CPU thread counts that do not oversubscribe the machine.

Small models run many tiny kernels; when two processes share the cores and each runs as many
OpenMP threads as there are cores, the threads spin-wait for each other and every step can
take 10-50x longer. Two defaults prevent that: OpenMP threads sleep when idle
(``OMP_WAIT_POLICY=PASSIVE``, set by ``import trajebm`` before torch loads, see
:func:`trajebm.passive_openmp`), and the command lines run ``cores / local processes``
threads (one per core under ``torchrun``'s ``LOCAL_WORLD_SIZE``).

Overrides: ``--threads N`` before the subcommand (``trajebm --threads 1 train ...``), or the
environment variables ``TRAJEBM_THREADS`` (ours) or ``OMP_NUM_THREADS`` (honoured as torch
does), and ``OMP_WAIT_POLICY=ACTIVE`` to keep spinning threads on a machine of your own.
"""

from __future__ import annotations

import os

import torch

THREADS_ENV = "TRAJEBM_THREADS"
"""Environment variable naming the torch thread count of the command lines."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def local_processes() -> int:
    """Processes sharing this machine's cores in one job: ``torchrun``'s LOCAL_WORLD_SIZE."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_threads() -> int:
    """Intra-op threads that fill the cores without oversubscribing: cores / local processes."""
    return max(1, available_cores() // local_processes())


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads and return the count.

    ``threads`` wins; else ``$TRAJEBM_THREADS``; else a user's ``$OMP_NUM_THREADS`` is left
    as torch applied it; else :func:`default_threads`. ValueError for a count below 1.
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
        threads = default_threads()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
