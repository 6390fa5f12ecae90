"""Tiny image runs and a quickly trained domain classifier shared by the imagebm tests."""

from __future__ import annotations

from pathlib import Path

from imagebm.datasets import load_dataset
from imagebm.metrics import train_domain_classifier
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
