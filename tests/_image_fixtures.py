"""Tiny image runs and a quickly trained domain classifier shared by the imagebm tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from imagebm.datasets import load_dataset
from imagebm.metrics import train_domain_classifier
from imagebm.presets import ImageTrainConfig
from imagebm.train import preset, train_images


def tiny_digits_run(out: Path, steps: int = 3, chain_steps: int = 2,
                    conditional: bool = True) -> Path:
    """A ``digits`` run of ``steps`` updates with ``chain_steps``-step chains, in ``out``."""
    cfg = preset("digits", steps=steps, conditional=conditional, checkpoint_every=1000,
                 snapshot_every=1000, sampler_steps=chain_steps)
    train_images(cfg, out, progress=False)
    return out


def digits_classifier(path: Path) -> Path:
    """A 40-step digits domain classifier saved at ``path`` (a classifier-cache file)."""
    train = load_dataset("digits")
    train_domain_classifier(train.float(), train.labels, 10, steps=40, seed=0).save(path)
    return path


def assert_resumes_exactly(config: Callable[[int], ImageTrainConfig], tmp: Path) -> nn.Module:
    """4 steps unbroken equal 2 steps, a stop and a resume to 4 (weights and replay buffer);
    returns the unbroken run's model."""
    unbroken = train_images(config(4), tmp / "a", progress=False)
    train_images(config(2), tmp / "b", progress=False)
    (tmp / "b" / "model.pt").unlink()
    resumed = train_images(config(4), tmp / "b", resume=True, progress=False)
    for a, b in zip(unbroken.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    a = torch.load(tmp / "a" / "checkpoint.pt", weights_only=False)["buffer"]
    b = torch.load(tmp / "b" / "checkpoint.pt", weights_only=False)["buffer"]
    assert torch.equal(a["data"], b["data"]) and torch.equal(a["cond"], b["cond"])
    return unbroken
