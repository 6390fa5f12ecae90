"""trajebm: energy-based models trained by Langevin dynamics, for trajectories and images."""

from __future__ import annotations

import importlib
from typing import Any

from trajebm.engine.errors import UsageError

__version__ = "0.1.0"

_LAZY = {"load_model": "trajebm.modelio", "save_model": "trajebm.modelio",
         "predict_rollouts": "trajebm.rollout", "goal_energy": "trajebm.rollout",
         "fit_model": "trajebm.fit", "variant_config": "trajebm.variants"}
__all__ = ["UsageError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """Trajectory-model entry points, imported on first use (keeps `import trajebm` light)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'trajebm' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
