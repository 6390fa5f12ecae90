"""The one trainer, split by role: the loop (:mod:`.trainer`), what a step minimises
(:mod:`.objectives`), settings (:mod:`.config`), exact-resume checkpoints (:mod:`.checkpoint`),
``torchrun`` (:mod:`.distributed`), the optimiser's pieces (:mod:`.optim`), logs (:mod:`.logs`)
and batches (:mod:`.batches`)."""

from trajebm.engine.train.batches import Batch, TensorBatches
from trajebm.engine.train.checkpoint import (
    CHECKPOINT_KEYS,
    checkpoint_name,
    checksum,
    read_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
    snapshot_paths,
)
from trajebm.engine.train.config import ContrastiveConfig, TrainConfig
from trajebm.engine.train.distributed import init_distributed, world
from trajebm.engine.train.objectives import (
    Contrastive,
    LossFn,
    Objective,
    StepResult,
    Supervised,
    cd_loss,
)
from trajebm.engine.train.optim import clip_to_adam_bound
from trajebm.engine.train.trainer import Divergence, Trainer, TrainingDiverged, ValidateFn

__all__ = [
    "CHECKPOINT_KEYS", "Batch", "Contrastive", "ContrastiveConfig", "Divergence", "LossFn",
    "Objective", "StepResult", "Supervised", "TensorBatches", "TrainConfig", "Trainer",
    "TrainingDiverged", "ValidateFn", "cd_loss", "checkpoint_name", "checksum",
    "clip_to_adam_bound", "init_distributed", "read_checkpoint", "rng_state", "seed_everything",
    "set_rng_state", "snapshot_paths", "world",
]
