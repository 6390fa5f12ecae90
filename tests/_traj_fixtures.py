"""A small hand dataset and quickly trained trajectory models shared by the model tests."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

from trajebm.data.collection import CollectConfig, collect
from trajebm.data.policies import PolicyConfig
from trajebm.fit import FitConfig, fit_model, trajectory_train_config
from trajebm.modelio import load_model
from trajebm.models import TrajectoryModel, model_config, paper_sampler

SMALL = CollectConfig(episodes=24, length=16, policy=PolicyConfig("scripted", random_every=4),
                      seed=5, chunk_episodes=12)


@functools.cache
def small_dataset(root: Path) -> Path:
    """Collect :data:`SMALL` once under ``root`` (24 episodes x 16 steps)."""
    out = root / "small"
    if not (out / "data" / "metadata.json").is_file():
        collect(SMALL, out, workers=2, progress=False)
    return out


def tiny_fit(kind: str, steps: int = 30, conditional: bool = True, sampler_steps: int = 20
             ) -> FitConfig:
    """A seconds-long training config with a small network (no validation rollouts)."""
    settings = {"conditional": conditional, "hidden": 32, "layers": 2}
    if kind == "ensemble":
        settings["members"] = 2
    if kind == "ebm":
        settings["sampler"] = replace(paper_sampler(), steps=sampler_steps)
    train = trajectory_train_config(steps=steps, warmup_steps=5, checkpoint_every=1000,
                                    log_every=10, progress=False, validate_every=0)
    return FitConfig(model=model_config(kind, **settings), train=train, batch_size=64)


def trained(root: Path, kind: str, conditional: bool = True, steps: int = 30) -> TrajectoryModel:
    """A model of ``kind`` trained briefly on the small dataset, once per session.

    It is saved in ``root/runs/{kind}[-uncond]-{steps}``.
    """
    run = root / "runs" / f"{kind}{'' if conditional else '-uncond'}-{steps}"
    if (run / "model.pt").exists():
        return load_model(run)
    return fit_model(small_dataset(root), run, tiny_fit(kind, steps, conditional))
