"""`trajebm plan`: a model (or the simulator), a planner and a task; episodes in MuJoCo.

:func:`plan` writes ``episodes.npz`` (reset seeds, goals, executed actions, the states MuJoCo
produced, what each plan expected at the end, success, final error), ``summary.json``
(success rate, median errors, the self-deception gap, planning time per control step),
``run.json`` and ``episodes.mp4`` (the best and the worst episode side by side).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import atomic_write_bytes, write_json, write_run_info
from trajebm.modelio import load_model
from trajebm.models import FeedForward, GaussianEnsemble, TrajectoryModel
from trajebm.plan.dynamics import LearnedDynamics, SimulatorDynamics
from trajebm.plan.episodes import DEFAULT_ENV, Episodes, goal_generator, reset_seeds, run_episodes
from trajebm.plan.langevin import LangevinPlanner
from trajebm.plan.planners import CEM, MPPI, Planner, RandomActions, Replanning, Shooting
from trajebm.plan.tasks import TASKS

PLANNERS = ("mppi", "cem", "shooting", "langevin", "random", "oracle")
"""Planner names; ``oracle`` is MPPI on the true simulator and needs no model."""
BEST_PLANNER = {"ebm": "langevin", "dsm": "langevin", "flow": "mppi", "fc": "mppi",
                "ensemble": "mppi"}
"""The planner a model kind gets when none is named."""
BUDGET = {"mppi": "candidates", "oracle": "candidates", "cem": "population",
          "shooting": "iterations", "langevin": "steps"}
"""What ``budget`` sets for each planner (per control step)."""
EQUAL_TIME_BUDGET = {
    ("mppi", "fc"): 700, ("mppi", "ensemble"): 300, ("mppi", "ebm"): 90, ("mppi", "dsm"): 90,
    ("cem", "fc"): 200, ("cem", "ensemble"): 30,
    ("shooting", "fc"): 15, ("shooting", "ensemble"): 8,
    ("langevin", "ebm"): 15, ("langevin", "dsm"): 15}
"""Default budgets that take about the same planning time per control step (~20 ms per episode
with 30 episodes planned together on one CPU thread, the models of the default variants;
measured 2026-12-06): comparisons at equal wall-clock time. MPPI on fc keeps PDDM's 700
candidates (8 ms); CEM on a sampling EBM has no equal-time budget (a population of 10 already
takes 130 ms: every particle is a Langevin chain at every step of its 15-step horizon)."""
ORACLE_CANDIDATES = 64
"""The oracle's default candidates (its simulated rollouts are costly)."""
LANGEVIN_HORIZON = 7
"""The Langevin planner's default horizon (rounded up to whole segments of the model)."""
CEM_PARTICLES = 5
"""TS∞ particles per CEM candidate for a stochastic model (PETS uses 20)."""


@dataclass
class PlanConfig:
    """A planning run: task, planner and its budget, episodes and their seed."""

    task: str = "rotate"
    """rotate | pose | move | lift (trajebm.plan.tasks)."""
    planner: str | None = None
    """mppi | cem | shooting | langevin | random | oracle (default: the model kind's best)."""
    episodes: int = 30
    """Episodes (goals), planned in one batch."""
    length: int = 50
    """Control steps per episode."""
    seed: int = 0
    """Seeds the resets, the goals and the planner."""
    env_id: str = DEFAULT_ENV
    """The hand env the episodes run in (the tasks are the block's; a model must have been
    trained on this env's state layout)."""
    horizon: int | None = None
    """Planning horizon in control steps (default: the planner's)."""
    budget: int | None = None
    """Candidates (mppi, oracle), population (cem), gradient steps (shooting) or Langevin
    steps (langevin) per control step (default: the planner's)."""
    replan_every: int = 1
    """Replan every k control steps, executing the last plan in between (1: every step, as
    PDDM and PETS do; at most the horizon)."""
    workers: int = 1
    """Simulator threads."""
    exploration: float = 0.0
    """N(0, σ²) noise added to every executed action (online data collection)."""
    video: bool = True
    """Render the best and the worst episode to episodes.mp4."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UsageError(f"unknown task {self.task!r}; choose from {', '.join(TASKS)}")
        if self.planner is not None and self.planner not in PLANNERS:
            raise UsageError(f"unknown planner {self.planner!r}; choose from "
                             f"{', '.join(PLANNERS)}")
        if self.exploration < 0:
            raise UsageError(f"exploration must be >= 0, got {self.exploration}")
        for name in ("episodes", "length", "horizon", "budget", "replan_every", "workers"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"{name} must be positive, got {value}")


def make_planner(name: str, cfg: PlanConfig, model: TrajectoryModel | None, simulator
                 ) -> Planner:
    """The planner ``name`` over ``model`` (or the simulator, for the oracle), sized by cfg;
    UsageError for a combination that cannot plan."""
    try:
        planner = _planner(name, cfg, model, simulator)
        if cfg.replan_every > 1 and name != "random":
            planner = Replanning(planner, cfg.replan_every)
        return planner
    except UsageError:
        raise
    except ValueError as err:  # a planner's own check of its sizes
        raise UsageError(f"{name}: {err}") from None


def _planner(name: str, cfg: PlanConfig, model: TrajectoryModel | None, simulator) -> Planner:
    task = TASKS[cfg.task]
    sizes: dict[str, Any] = {"seed": cfg.seed}
    if cfg.horizon is not None:
        sizes["horizon"] = cfg.horizon
    if name in BUDGET:
        budget = cfg.budget or EQUAL_TIME_BUDGET.get((name, getattr(model, "kind", None)))
        if budget is not None:
            sizes[BUDGET[name]] = budget
    if name == "random":
        return RandomActions(cfg.seed)
    if name == "oracle":
        return MPPI(SimulatorDynamics(simulator), task,
                    **{"candidates": ORACLE_CANDIDATES, **sizes})
    if model is None:
        raise UsageError(f"the {name} planner plans with a model: give --model")
    members = getattr(model.config, "members", 1)
    if name == "mppi":
        return MPPI(LearnedDynamics(model, particles=members), task, **sizes)
    if name == "cem":
        return CEM(LearnedDynamics(model, particles=CEM_PARTICLES), task, **sizes)
    if name == "shooting":
        if not isinstance(model, FeedForward | GaussianEnsemble):
            other = "langevin" if model.energy_based else "mppi or cem"
            raise UsageError(f"shooting differentiates a regression model's predictions; "
                             f"the {model.kind} model samples them (use {other})")
        return Shooting(LearnedDynamics(model, particles=members), task, **sizes)
    if not model.energy_based:
        raise UsageError(f"Langevin planning needs an energy; the {model.kind} model has none "
                         f"(use shooting, mppi or cem)")
    segment = model.config.segment
    if "horizon" not in sizes:
        sizes["horizon"] = -(-LANGEVIN_HORIZON // segment) * segment
    elif sizes["horizon"] % segment:
        raise UsageError(f"horizon {sizes['horizon']} is not a multiple of the model's segment "
                         f"{segment}")
    return LangevinPlanner(LearnedDynamics(model), task, **sizes)


def check_model(model: TrajectoryModel, simulator) -> None:
    """UsageError unless ``model`` can plan in the simulator's env (actions, state layout)."""
    if not model.config.conditional:
        raise UsageError(f"the {model.kind} model is unconditional: it takes no actions, so "
                         f"it cannot plan")
    names = list(model.state_names or [])
    if names and names != list(simulator.layout.names):
        raise UsageError(f"the model's states ({len(names)} dims) are not the env's "
                         f"({simulator.layout.dim}); use a model trained on this env's data")


def open_simulator(env_id: str, workers: int):
    """The env's simulator; UsageError for an env id that is not one of the hand envs."""
    from trajebm.envs import ENV_IDS, Simulator

    if env_id not in ENV_IDS:
        raise UsageError(f"unknown env {env_id!r}; choose from {', '.join(sorted(ENV_IDS))}")
    return Simulator.make(env_id, workers=workers)


def run_plan(model: TrajectoryModel | None, cfg: PlanConfig, simulator) -> Episodes:
    """Plan ``cfg.episodes`` episodes with ``model`` (None for random and oracle)."""
    name = cfg.planner or (BEST_PLANNER[model.kind] if model is not None else None)
    if name is None:
        raise UsageError("give --model, or --planner oracle or random")
    if model is not None:
        check_model(model, simulator)
    planner = make_planner(name, cfg, model, simulator)
    with torch.random.fork_rng():  # a model's own sampling draws from torch's global RNG
        torch.manual_seed(cfg.seed)
        episodes = run_episodes(planner, TASKS[cfg.task], simulator,
                                reset_seeds(cfg.seed, cfg.episodes),
                                goal_generator(cfg.seed, cfg.task), cfg.length,
                                oracle=name == "oracle", progress=cfg.progress,
                                exploration=cfg.exploration,
                                noise_rng=np.random.default_rng([cfg.seed, 1]))
    episodes.extra.update(task=cfg.task, planner=name, horizon=planner.horizon,
                          model=None if model is None else model.kind)
    return episodes


def plan(model: str | os.PathLike | TrajectoryModel | None, out_dir: str | os.PathLike,
         config: PlanConfig | None = None) -> dict[str, Any]:
    """Run :func:`run_plan` and write its files into ``out_dir``; return the summary."""
    cfg = config or PlanConfig()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    if (out / "summary.json").exists():
        raise UsageError(f"{out} already holds a planning run; choose another --out")
    loaded = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    env_id = cfg.env_id
    simulator = open_simulator(env_id, cfg.workers)
    try:
        episodes = run_plan(loaded, cfg, simulator)
    finally:
        simulator.close()
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **episodes.arrays())
    atomic_write_bytes(out / "episodes.npz", buf.getvalue())
    summary = {**episodes.summary(), "env_id": env_id,
               "model_path": None if not isinstance(model, (str, os.PathLike)) else str(model)}
    if cfg.video:
        skipped = episodes_video(episodes, env_id, out / "episodes.mp4")
        summary["video"] = skipped or "episodes.mp4"
    write_run_info(out, cfg, cfg.seed, model=summary["model_path"])
    write_json(out / "summary.json", summary)
    return summary


def episodes_video(episodes: Episodes, env_id: str, path: Path) -> str | None:
    """The best (lowest final error) and the worst episode side by side; None when written,
    else why not."""
    from trajebm.data.render import render_panels

    order = np.argsort(episodes.final_error)
    panels = {"best": episodes.states[order[0]], "worst": episodes.states[order[-1]]}
    return render_panels(env_id, panels, path)
