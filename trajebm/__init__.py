"""trajebm: energy-based models trained by Langevin dynamics, for trajectories and images."""

from trajebm.errors import UsageError

__version__ = "0.1.0"
__all__ = ["UsageError", "__version__"]
