"""Saving and loading trajectory models: one file holds weights, config, statistics, provenance.

The file is the engine's model-file format (:mod:`trajebm.engine.modelfile`, ``weights_only``
loads). Its config is the kind's config plus ``kind``. Files written before the configs were
split by kind (one config with ``kind`` and ``objective`` and every kind's fields) load too:
``objective="dsm"`` names the ``dsm`` kind, and fields a kind does not have are dropped.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.modelfile import load_model_file, save_model_file
from trajebm.engine.runinfo import jsonable
from trajebm.engine.settings import from_dict
from trajebm.models import MODEL_CLASSES, ModelConfig, TrajectoryModel, build_model

MODEL_FILE = "model.pt"
"""A run folder's final model."""
FORMAT = "trajebm-trajectory-model"


def config_record(config: ModelConfig) -> dict[str, Any]:
    """A model config as saved: its fields, ``kind`` among them."""
    return jsonable(config)


def config_from_record(record: dict[str, Any]) -> ModelConfig:
    """The config saved by :func:`config_record` (or by an earlier trajebm, module docstring)."""
    record = dict(record)
    kind = record.pop("kind", "ebm")
    if record.pop("objective", "cd") == "dsm":
        kind = "dsm"
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown model kind {kind!r}")
    cls = MODEL_CLASSES[kind][0]
    own = {f.name for f in dataclasses.fields(cls) if f.init}
    return from_dict(cls, record, ignore=frozenset(record) - own)


def save_model(model: TrajectoryModel, path: str | os.PathLike) -> Path:
    """Write weights, config, statistics and provenance to one file (atomically)."""
    return save_model_file(path, FORMAT, config_record(model.config), model.state_dict(),
                           meta=model.meta)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrajectoryModel:
    """Load a model saved by :func:`save_model`; ``path`` is the file or its run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise UsageError(f"{path}: no such model file (train one with `trajebm train`)")
    record = load_model_file(path, FORMAT, "trajebm trajectory model")
    try:
        config = config_from_record(record["config"])
        model = build_model(config, meta=record["meta"])
        model.load_state_dict(record["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{path}: not a usable trajectory model ({reason})") from None
    return model.to(resolve_device(device)).eval()
