"""Likelihood bounds by AIS for any trajebm energy: see :mod:`trajebm.engine.likelihood`."""
from trajebm.engine.likelihood import AISResult, ais, beta_schedule, effective_sample_size

__all__ = ["AISResult", "ais", "beta_schedule", "effective_sample_size"]
