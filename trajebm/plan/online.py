"""The PETS/PDDM loop: plan, collect what happened, add it to the data, continue training.

Iteration 0 evaluates the starting model. Each further iteration i collects
``collect_episodes`` episodes with the planner on the current model (with exploration noise
on the executed actions), writes the dataset grown by them (:func:`trajebm.data.extend_dataset`)
to ``OUT/iter{i}/data``, continues training the model on it for ``steps`` steps
(``OUT/iter{i}/model``), and evaluates it on the same held-out goals as every iteration
(``OUT/iter{i}/eval``). An iteration is finished when ``OUT/iter{i}/done.json`` exists; a run
started again (with the same settings) skips finished iterations and redoes an unfinished one
from its start, so a loop killed at any moment ends where an unbroken one would. ``online.json`` and
``online.png`` give the success per iteration.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trajebm.data.extend import extend_dataset
from trajebm.engine.errors import UsageError
from trajebm.engine.plotting import pyplot
from trajebm.engine.runinfo import jsonable, write_json, write_run_info
from trajebm.fit import FitConfig, fit_model, trajectory_train_config
from trajebm.modelio import load_model
from trajebm.models import TrajectoryModel
from trajebm.plan.job import PlanConfig, open_simulator, plan, run_plan

EVAL_SEED_OFFSET = 10_000
"""Evaluation episodes use seed + this offset: never the goals collected on."""


@dataclass
class OnlineConfig:
    """The loop: iterations, what each collects, how long each trains, how it is judged."""

    iterations: int = 3
    """Rounds of collect, retrain, evaluate after the starting model's evaluation."""
    task: str = "rotate"
    """The task planned for, collected on and evaluated."""
    planner: str | None = None
    """The planner (default: the model kind's best)."""
    collect_episodes: int = 40
    """Planner episodes added to the data per iteration (PDDM: 40)."""
    eval_episodes: int = 30
    """Held-out goals each iteration is evaluated on."""
    exploration: float = 0.1
    """N(0, σ²) noise on the collected episodes' executed actions."""
    steps: int = 1000
    """Training steps per iteration, continuing from the last model."""
    length: int = 50
    """Control steps per episode."""
    horizon: int | None = None
    """Planning horizon (default: the planner's)."""
    budget: int | None = None
    """The planner's budget per control step (default: the planner's)."""
    seed: int = 0
    """Seeds collection, training and evaluation."""
    workers: int = 1
    """Simulator threads."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        for name in ("iterations", "collect_episodes", "eval_episodes", "steps"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")

    def planning(self, episodes: int, seed: int, **extra: Any) -> PlanConfig:
        """The :class:`PlanConfig` of ``episodes`` episodes seeded ``seed``."""
        return PlanConfig(task=self.task, planner=self.planner, episodes=episodes,
                          length=self.length, seed=seed, horizon=self.horizon,
                          budget=self.budget, workers=self.workers, video=False,
                          progress=self.progress, **extra)


def continued(model: TrajectoryModel, cfg: OnlineConfig, iteration: int) -> FitConfig:
    """How iteration ``iteration`` continues training ``model``: its config and split, the
    trajectory trainer's settings for ``cfg.steps`` steps, no validation."""
    split = model.split
    train = trajectory_train_config(steps=cfg.steps, validate_every=0, select_by=None,
                                    seed=cfg.seed + iteration, progress=cfg.progress)
    return FitConfig(model=model.config, train=train, test_fraction=split["test_fraction"],
                     split_seed=split["seed"])


def _collect(model: TrajectoryModel, data: Path, folder: Path, cfg: OnlineConfig,
             iteration: int) -> Path:
    """Plan ``collect_episodes`` episodes with noise; write the data grown by them."""
    seed = cfg.seed + 1000 * iteration
    simulator = open_simulator(PlanConfig().env_id, cfg.workers)
    try:
        episodes = run_plan(model, cfg.planning(cfg.collect_episodes, seed,
                                                exploration=cfg.exploration), simulator)
    finally:
        simulator.close()
    origin = {"iteration": iteration, "task": cfg.task, "planner": episodes.extra["planner"],
              "seed": seed, "exploration": cfg.exploration}
    return extend_dataset(data, episodes.states, episodes.actions, folder / "data",
                          seeds=episodes.reset_seed.tolist(), origin=origin)


def online(model_dir: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike,
           config: OnlineConfig | None = None) -> dict[str, Any]:
    """Run the loop (module docstring) from the model in ``model_dir`` trained on ``data``."""
    cfg = config or OnlineConfig()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    model_path, data_path = Path(model_dir), Path(data)
    model = load_model(model_path)
    PlanConfig(task=cfg.task, planner=cfg.planner)  # names checked before anything is written
    settings = {"config": {k: v for k, v in jsonable(cfg).items()
                           if k not in ("iterations", "progress")},
                "model": str(model_dir), "data": str(data)}
    record = out / "online_settings.json"
    if record.exists() and json.loads(record.read_text()) != settings:
        raise UsageError(f"{out} holds an online loop with other settings; choose another "
                         f"--out (a loop continues only with the same settings; "
                         f"--iterations may grow)")
    out.mkdir(parents=True, exist_ok=True)
    write_json(record, settings)
    write_run_info(out, cfg, cfg.seed, model=str(model_dir), data=str(data))
    rows = []
    for i in range(cfg.iterations + 1):
        folder = out / f"iter{i}"
        if not (folder / "done.json").exists():
            shutil.rmtree(folder, ignore_errors=True)  # an unfinished iteration starts over
            folder.mkdir(parents=True)
            if i > 0:
                data_path = _collect(model, data_path, folder, cfg, i)
                fit_model(data_path, folder / "model", continued(model, cfg, i), init=model)
                model_path = folder / "model"
            evaluation = plan(load_model(model_path), folder / "eval",
                              cfg.planning(cfg.eval_episodes, cfg.seed + EVAL_SEED_OFFSET))
            write_json(folder / "done.json", {**evaluation, "iteration": i,
                                              "model_dir": str(model_path),
                                              "data_dir": str(data_path)})
        done = _read_done(folder)
        model_path, data_path = Path(done["model_dir"]), Path(done["data_dir"])
        model = load_model(model_path)
        rows.append(done)
    report = {"config": jsonable(cfg), "iterations": rows}
    write_json(out / "online.json", report)
    plot_online(rows, out / "online.png")
    return report


def _read_done(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "done.json").read_text())


def plot_online(rows: list[dict[str, Any]], path: Path) -> None:
    """Success rate and median final error per iteration."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    x = [r["iteration"] for r in rows]
    ax1.plot(x, [r["success_rate"] for r in rows], "o-")
    ax1.set(xlabel="iteration", ylabel="success rate", ylim=(-0.02, 1.02))
    ax2.plot(x, [r["final_error"] for r in rows], "o-")
    ax2.set(xlabel="iteration", ylabel="median final error")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
