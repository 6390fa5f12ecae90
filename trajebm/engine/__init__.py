"""The shared engine: one Langevin sampler, one replay buffer, one trainer, one Fréchet
distance, one MLP, one settings mechanism, annealed importance sampling, run records and the
model-file format.

It knows nothing of trajectories, environments, datasets or images; the trajectory
application (:mod:`trajebm.models` and friends), the toy densities and :mod:`imagebm` are
built on it. Import-linter contracts in ``pyproject.toml`` keep it that way.
"""

from trajebm.engine.buffer import ReplayBuffer, uniform_init
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.metrics import frechet_distance, frechet_distance_samples
from trajebm.engine.sampling import LangevinConfig, hmc, langevin
from trajebm.engine.train import (
    Contrastive,
    ContrastiveConfig,
    Supervised,
    TensorBatches,
    TrainConfig,
    Trainer,
)

__all__ = [
    "Contrastive", "ContrastiveConfig", "LangevinConfig", "ReplayBuffer", "Supervised",
    "TensorBatches", "TrainConfig", "Trainer", "UsageError",
    "frechet_distance", "frechet_distance_samples", "hmc", "langevin", "resolve_device",
    "uniform_init",
]
