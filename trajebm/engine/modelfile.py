"""The one file format for saved models, trajectory and image alike.

A model file is a ``torch.save``d dict ``{"format", "version", "config", "state_dict", ...}``
whose values are plain Python types and tensors, so it loads with ``weights_only=True`` (no
pickled code runs). ``format`` names the kind of model, so a file of one kind handed to the
loader of another is refused with a clear message instead of a confusing key error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import atomic_torch_save, jsonable

VERSION = 1


def save_model_file(path: str | os.PathLike, format: str, config: Any,
                    state_dict: dict[str, torch.Tensor], **extra: Any) -> Path:
    """Atomically write weights (moved to CPU), a JSON-able config and ``extra`` to ``path``."""
    record = {"format": format, "version": VERSION, "config": jsonable(config),
              "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
              **jsonable(extra)}
    return atomic_torch_save(record, path)


def load_model_file(path: str | os.PathLike, format: str, what: str = "model") -> dict[str, Any]:
    """The record saved by :func:`save_model_file`; :class:`UsageError` unless it is ``format``.

    ``what`` names the kind of file in messages (e.g. "trajebm trajectory model").
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such {what} file")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UsageError(f"{path}: not a readable {what} ({type(err).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != format:
        raise UsageError(f"{path}: not a {what} file")
    if int(record.get("version", 0)) > VERSION:
        raise UsageError(f"{path}: written by a newer trajebm (format version "
                         f"{record['version']}); upgrade trajebm to read it")
    return record
