"""trajebm: energy-based models trained by Langevin dynamics, for trajectories and images."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


def passive_openmp() -> bool:
    """Make idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``).

    OpenMP reads the policy once, when torch loads, so this runs on ``import trajebm`` and
    only acts before torch is imported and when the user has not set the variable (set
    ``OMP_WAIT_POLICY=ACTIVE`` to keep spinning). Spinning threads of two processes sharing
    the cores slow small models 10-50x (:mod:`trajebm.engine.threads`). Returns whether it set
    the variable.
    """
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


passive_openmp()

from trajebm.engine.errors import UsageError  # noqa: E402 - after the OpenMP policy is set

__version__ = "0.1.0"

_LAZY = {"load_model": "trajebm.models", "predict_rollouts": "trajebm.rollout",
         "goal_energy": "trajebm.rollout"}
__all__ = ["UsageError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """Trajectory-model entry points, imported on first use (keeps `import trajebm` light)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'trajebm' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
