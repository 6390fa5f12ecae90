"""Trajectory models, one config per kind, behind one interface (:class:`TrajectoryModel`).

Kinds: ``ebm`` (the paper's EBM, contrastive divergence), ``dsm`` (a noise-conditioned EBM,
denoising score matching), ``flow`` (conditional flow matching), ``fc`` (feed-forward
regression) and ``ensemble`` (a probabilistic ensemble, PETS). They are pure ``nn.Module``s:
saving and loading live in :mod:`trajebm.modelio`, the rollout loop in :mod:`trajebm.rollout`,
training in :mod:`trajebm.fit`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trajebm.engine.errors import UsageError
from trajebm.models.base import DEFAULT_SPLIT, ModelConfig, TrajectoryModel
from trajebm.models.baselines import EnsembleConfig, FCConfig, FeedForward, GaussianEnsemble
from trajebm.models.dsm import DenoisingEBM, DSMConfig
from trajebm.models.ebm import EBMConfig, TrajectoryEBM, ZEnergy, paper_sampler
from trajebm.models.flow import FlowConfig, FlowMatching

MODEL_CLASSES: dict[str, tuple[type[ModelConfig], type[TrajectoryModel]]] = {
    "ebm": (EBMConfig, TrajectoryEBM), "dsm": (DSMConfig, DenoisingEBM),
    "flow": (FlowConfig, FlowMatching), "fc": (FCConfig, FeedForward),
    "ensemble": (EnsembleConfig, GaussianEnsemble)}
"""Each kind's config and model class."""
MODEL_KINDS = tuple(MODEL_CLASSES)


def model_config(kind: str, **settings: Any) -> ModelConfig:
    """The config of model ``kind`` with ``settings``; UsageError for what does not fit."""
    if kind not in MODEL_CLASSES:
        raise UsageError(f"unknown model kind {kind!r}; choose from {', '.join(MODEL_KINDS)}")
    try:
        return MODEL_CLASSES[kind][0](**settings)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{kind} model: {err}") from None


def build_model(config: ModelConfig, state_mean: np.ndarray | None = None,
                state_std: np.ndarray | None = None, meta: dict[str, Any] | None = None
                ) -> TrajectoryModel:
    """A fresh model of ``config``'s kind carrying the given statistics and provenance."""
    return MODEL_CLASSES[config.kind][1](config, state_mean, state_std, meta)


__all__ = [
    "DEFAULT_SPLIT", "MODEL_CLASSES", "MODEL_KINDS", "DSMConfig", "DenoisingEBM", "EBMConfig",
    "EnsembleConfig", "FCConfig", "FeedForward", "FlowConfig", "FlowMatching",
    "GaussianEnsemble", "ModelConfig",
    "TrajectoryEBM", "TrajectoryModel", "ZEnergy", "build_model", "model_config",
    "paper_sampler",
]
