"""The continual-learning experiment's settings and the data, split and trainer every method
shares (:mod:`imagebm.continual`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from imagebm.models import ImageEBMConfig
from imagebm.presets import ImageTrainConfig, preset
from imagebm.train import load_training_data, model_config, to_unit
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.train import Objective, Supervised, TensorBatches, Trainer

METHODS = ("ebm", "finetune", "ewc", "si", "lwf", "genreplay", "joint")
REPLAY_METHODS = ("genreplay",)
"""Methods that replay (generated) images of earlier tasks; the report labels them."""
EBM_LOSSES = ("cd", "cd+ce", "ce")
EBM_NEGATIVES = ("current", "seen")
EBM_TRAIN = ("all", "class")
REPLAY_TARGETS = ("hard", "soft")
CONTINUAL_PRESETS = ("digits", "mnist5k", "mnist")
"""Names of :data:`imagebm.presets.PRESETS` whose data, backbone and sampler a run uses."""


@dataclass
class ContinualConfig:
    """A class-incremental experiment: data and backbone (``preset``), budget, methods, seeds.

    The regularisation defaults are the best of a sweep on seed 0 of digits at 150 steps (EWC
    lambda 10..1e6, SI c 0.1..1000, LwF alpha 0.5..10): all strengths ended within a point of
    fine-tuning or below it.
    """

    preset: str = "digits"
    """The data, backbone and sampler: digits | mnist5k | mnist."""
    methods: tuple[str, ...] = METHODS
    """Any of: ebm finetune ewc si lwf genreplay joint (genreplay replays generated images)."""
    seeds: int = 5
    """Runs seeds 0..N-1."""
    classes_per_task: int = 2
    """Classes per task, by class id."""
    steps: int = 150
    """Training steps per task, every method."""
    batch_size: int | None = None
    """Images per step (default: the preset's)."""
    lr: float | None = None
    """Adam's learning rate (default: the preset's)."""
    width: int | None = None
    """The backbone's base filter count, every method's (default: the preset's: 16 for digits
    and mnist5k, 32 for mnist)."""
    ebm_loss: str = "cd+ce"
    """The EBM's loss per task: cd (contrastive divergence) | cd+ce (plus the cross-entropy
    over the task's classes) | ce (that cross-entropy without Langevin negatives)."""
    ce_weight: float = 1.0
    """Weight of the EBM's cross-entropy over the current task's classes (cd+ce)."""
    ebm_negatives: str = "current"
    """The EBM's Langevin negatives are conditioned on: current (the positives' labels, the
    current task's classes only) | seen (labels drawn uniformly from every class seen so far,
    so old classes' energies are pushed up at their own samples too)."""
    ebm_train: str = "all"
    """The EBM's weights trained per task: all | class (after the first task only the per-class
    input biases and output gains of the convs; the stem, convs, skips and head keep their
    first-task values)."""
    ewc_lambda: float = 1000.0
    """EWC: scales the Fisher penalty lambda/2 sum F (theta - theta*)^2."""
    ewc_gamma: float = 1.0
    """EWC: the running Fisher's decay per task (online EWC)."""
    fisher_samples: int = 256
    """EWC: training images of a task the Fisher is estimated from (the model's own labels)."""
    si_c: float = 0.1
    """SI: scales the penalty."""
    si_xi: float = 0.1
    """SI: damps the importance."""
    lwf_alpha: float = 1.0
    """LwF: weight of the distillation of the previous model's old-class outputs."""
    lwf_temperature: float = 2.0
    """LwF: the distillation's temperature."""
    vae_steps: int | None = None
    """genreplay: the VAE's training steps per task (default: steps)."""
    vae_hidden: int | None = None
    """genreplay: units of each of the VAE's two hidden layers (default: 400 for 28x28
    images, 128 for 8x8)."""
    vae_latent: int | None = None
    """genreplay: the VAE's latent dimensions (default: 32 for 28x28 images, 16 for 8x8)."""
    replay_targets: str = "hard"
    """genreplay: labels of replayed images from the previous classifier: hard (its most
    likely class among those seen before the task, cross-entropy over every class seen) |
    soft (its softmax over those classes, distilled at temperature 2)."""
    data_root: str | None = None
    """Dataset files (mnist only)."""
    device: str = "cpu"
    """cpu | cuda"""


    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        if self.preset not in CONTINUAL_PRESETS:
            raise UsageError(f"unknown preset {self.preset!r}; choose from "
                             f"{', '.join(CONTINUAL_PRESETS)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UsageError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
                             f"choose from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise UsageError(f"methods repeat: {' '.join(self.methods)}")
        for name, choices in (("ebm_loss", EBM_LOSSES), ("ebm_negatives", EBM_NEGATIVES),
                              ("ebm_train", EBM_TRAIN), ("replay_targets", REPLAY_TARGETS)):
            if getattr(self, name) not in choices:
                raise UsageError(f"unknown {name} {getattr(self, name)!r}; choose from "
                                 f"{', '.join(choices)}")
        if self.seeds < 1 or self.steps < 1 or self.classes_per_task < 1:
            raise UsageError(f"need seeds, steps and classes_per_task >= 1, got {self.seeds}, "
                             f"{self.steps} and {self.classes_per_task}")
        sizes = {"batch_size": self.batch_size, "fisher_samples": self.fisher_samples,
                 "width": self.width, "vae_steps": self.vae_steps,
                 "vae_hidden": self.vae_hidden, "vae_latent": self.vae_latent}
        small = [k for k, v in sizes.items() if v is not None and v < 1]
        if small:
            raise UsageError(f"{', '.join(small)} must be >= 1")
        if self.lr is not None and self.lr <= 0 or self.lwf_temperature <= 0 or self.si_xi <= 0:
            raise UsageError("lr, lwf_temperature and si_xi must be positive")
        if min(self.ce_weight, self.ewc_lambda, self.si_c, self.lwf_alpha) < 0 or not (
                0.0 <= self.ewc_gamma <= 1.0):
            raise UsageError("ce_weight, ewc_lambda, si_c and lwf_alpha must be >= 0 and "
                             "ewc_gamma in [0, 1]")

    def image_config(self) -> ImageTrainConfig:
        """The preset with this experiment's batch size, learning rate and width."""
        cfg = preset(self.preset)
        return replace(cfg, batch_size=self.batch_size or cfg.batch_size,
                       train=replace(cfg.train, lr=self.lr or cfg.train.lr),
                       model=replace(cfg.model, width=self.width or cfg.model.width))


def split_tasks(num_classes: int, classes_per_task: int) -> list[tuple[int, ...]]:
    """The class-incremental split by class id: (0, 1), (2, 3), ... (the last may be smaller)."""
    if not 1 <= classes_per_task <= num_classes:
        raise UsageError(f"classes_per_task must be in [1, {num_classes}], got "
                         f"{classes_per_task}")
    return [tuple(range(c, min(c + classes_per_task, num_classes)))
            for c in range(0, num_classes, classes_per_task)]


def rows_of(labels: Tensor, classes: tuple[int, ...]) -> Tensor:
    """Indices of the rows whose label is one of ``classes``."""
    return torch.isin(labels, torch.tensor(classes)).nonzero().squeeze(1)


@dataclass
class ContinualSetup:
    """What every method of a run shares: the preset, its data, the split and the device."""

    image: ImageTrainConfig
    config: ContinualConfig
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int
    tasks: list[tuple[int, ...]]
    device: torch.device
    model_config: ImageEBMConfig = field(init=False)

    def __post_init__(self) -> None:
        self.model_config = model_config(self.image, self.num_classes)

    def fit(self, model: nn.Module, objective: Objective, images: Tensor, labels: Tensor,
            seed: int, work: Path, steps: int | None = None) -> None:
        """Train ``model`` on one task's ``images`` with the engine's Trainer (a fresh Adam).

        Every method gets the same budget: the preset's optimiser settings with this run's
        steps (or ``steps``: a generative replay's VAE), batch size and lr. Checkpoints go to
        the temporary ``work`` folder (for the divergence guard's rollback); a supervised loss
        has no energy, so no |E| limit.
        """
        steps = steps or self.config.steps
        train = replace(self.image.train, steps=steps, seed=seed, progress=False,
                        snapshot_every=0, validate_every=0, checkpoint_every=steps)
        if isinstance(objective, Supervised):
            train = replace(train, energy_limit=math.inf)
        batches = TensorBatches(images, labels, self.image.batch_size, seed=seed,
                                transform=to_unit)
        Trainer(model, batches, objective, train, work, self.device).fit()


def load_setup(config: ContinualConfig) -> ContinualSetup:
    """The preset's train and test splits, the task split and the device, checked."""
    image = config.image_config()
    device = resolve_device(config.device)
    train = load_training_data(image, config.data_root, "train")
    test = load_training_data(image, config.data_root, "test")
    tasks = split_tasks(train.num_classes, config.classes_per_task)
    return ContinualSetup(image, config, train.images, train.labels, test.images, test.labels,
                          train.num_classes, tasks, device)
