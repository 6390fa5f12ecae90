"""`trajebm steer`: steering EBM rollouts with goal energies, measured rather than shown.

For each test start, rollouts are sampled three ways — unsteered, and with one of two goal
energies on the object's height added to the model's energy at every step (a product of
experts, no retraining):

* ``lift``: raise the object ``lift`` metres above its height at the start (two-sided goal);
* ``hold``: keep the object from dropping more than ``tolerance`` below that height (one-sided).

A rollout reaches the goal when its final predicted height is within ``tolerance`` of the lift
target (above the hold floor). The true trajectories' rate is the base rate. Steering under
fixed true actions asks the model for states the actions may not produce, so the cost is
measured too: the physics error of steered vs unsteered rollouts (MuJoCo re-simulates one step
from each predicted state under its action; see :mod:`trajebm.evaluate.physics`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trajebm.engine.errors import UsageError
from trajebm.engine.plotting import pyplot
from trajebm.engine.runinfo import atomic_write_bytes, write_json, write_run_info
from trajebm.evaluate import (
    EvalConfig,
    TestSet,
    format_value,
    load_test_set,
    physics_checker,
    predict_test,
    rollout_physics,
)
from trajebm.modelio import load_model
from trajebm.models import TrajectoryModel
from trajebm.rollout import goal_energy, predict_rollouts, usable_horizon

if TYPE_CHECKING:
    from trajebm.envs import Simulator

GOALS = ("lift", "hold")
HEIGHT = "object:z"


@dataclass
class SteerConfig:
    """Goal sizes and weight, rollout and physics-check settings."""

    horizon: int = 48
    """Predicted steps per rollout (at most what the test trajectories hold after k states)."""
    samples: int = 4
    """Samples per test start."""
    max_episodes: int | None = 200
    """Use at most N test episodes."""
    weight: float = 0.2
    """Goal energy weight."""
    lift: float = 0.02
    """Lift goal in metres above the start height."""
    tolerance: float = 0.005
    """Metres within which a goal counts as reached."""
    physics_episodes: int = 32
    """Test starts whose rollouts get the physics check."""
    physics_every: int = 2
    """Check every n-th predicted step."""
    seed: int = 0
    """Seed of the rollouts' sampling."""
    device: str = "cpu"
    """cpu | cuda"""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.horizon <= 0 or self.samples <= 0 or self.weight <= 0 or self.tolerance <= 0:
            raise UsageError("horizon, samples, weight and tolerance must be positive")


def goal_targets(goal: str, start: np.ndarray, cfg: SteerConfig) -> tuple[np.ndarray, str]:
    """Target heights per start and the goal energy's bound for ``goal``."""
    if goal == "lift":
        return start + cfg.lift, "equal"
    return start - cfg.tolerance, "above"


def reached(goal: str, final: np.ndarray, target: np.ndarray, tolerance: float) -> np.ndarray:
    """Whether final heights (n, ...) meet the goal whose targets are ``target`` (n,)."""
    target = target.reshape(-1, *([1] * (final.ndim - 1)))
    if goal == "lift":
        return np.abs(final - target) <= tolerance
    return final >= target - tolerance


def _physics(checker: Simulator | None, test: TestSet, pred: np.ndarray, k: int,
             cfg: SteerConfig) -> float | None:
    """The mean physics error of the first samples of rollouts ``pred`` (None unchecked)."""
    if checker is None:
        return None
    return float(rollout_physics(checker, test, pred[:, 0], k, cfg.physics_episodes,
                                 cfg.physics_every).mean())


def steer_model(model: TrajectoryModel, test: TestSet, cfg: SteerConfig,
                checker: Simulator | None = None) -> dict[str, Any]:
    """Goal rates and physics errors of one EBM, unsteered and per goal."""
    names = test.names
    if HEIGHT not in names:
        raise UsageError(f"the state has no {HEIGHT!r}; steering goals need the object height")
    z = names.index(HEIGHT)
    k = model.config.context
    horizon = usable_horizon(cfg.horizon, test.states.shape[1], k)
    ecfg = EvalConfig(horizon=horizon, samples=cfg.samples, seed=cfg.seed, device=cfg.device,
                      progress=cfg.progress)
    start = test.states[:, k - 1, z]
    truth_final = test.states[:, k - 1 + horizon, z]
    plain = predict_test(model, test, ecfg)
    acts = test.actions[:, k - 1 : k - 1 + horizon] if model.config.conditional else None
    result: dict[str, Any] = {"physics_unsteered": _physics(checker, test, plain, k, cfg),
                              "height_change": {"unsteered": _change(plain, z, start)},
                              "goals": {}}
    for goal in GOALS:
        target, bound = goal_targets(goal, start, cfg)
        energy = goal_energy(np.repeat(target, cfg.samples)[:, None], [z], cfg.weight,
                             scale=test.stats.std[[z]], bound=bound)
        steered = predict_rollouts(model, test.states[:, :k], acts, horizon, cfg.samples,
                                   extra_energy=energy, seed=cfg.seed, device=cfg.device,
                                   progress=cfg.progress)
        result["height_change"][goal] = _change(steered, z, start)
        result["goals"][goal] = {
            "truth": float(reached(goal, truth_final, target, cfg.tolerance).mean()),
            "unsteered": float(reached(goal, plain[:, :, -1, z], target, cfg.tolerance).mean()),
            "steered": float(reached(goal, steered[:, :, -1, z], target, cfg.tolerance).mean()),
            "physics_steered": _physics(checker, test, steered, k, cfg)}
    result["height_change"]["truth"] = (test.states[:, k : k + horizon, z]
                                        - start[:, None]).mean(0).tolist()
    return result


def _change(pred: np.ndarray, z: int, start: np.ndarray) -> list[float]:
    """Mean height change from the start over the horizon, across starts and samples."""
    return (pred[..., z] - start[:, None, None]).mean((0, 1)).tolist()


def steer(models: list[str | os.PathLike], data: str | os.PathLike, out_dir: str | os.PathLike,
          config: SteerConfig | None = None) -> dict[str, Any]:
    """Steering report of each EBM in ``models`` (e.g. one per seed) and the median over them."""
    cfg = config or SteerConfig()
    if not models:
        raise UsageError("give at least one model")
    loaded = [load_model(m, cfg.device) for m in models]
    for m, path in zip(loaded, models, strict=True):
        if not m.energy_based:
            raise UsageError(f"{path}: steering adds energies; the {m.kind} model has none")
    if len({tuple(sorted(m.split.items())) for m in loaded}) > 1:
        raise UsageError("the models were trained on different splits; steer them separately")
    test = load_test_set(data, loaded[0].split, loaded[0].config.context, cfg.max_episodes)
    per_model = {}
    with physics_checker(test.info, any(m.config.conditional for m in loaded)) as checker:
        for m, path in zip(loaded, models, strict=True):
            per_model[str(path)] = steer_model(m, test, cfg,
                                               checker if m.config.conditional else None)
    rows = summary_rows(per_model)
    report = {"config": cfg, "test_starts": len(test.states), "models": per_model,
              "summary": rows}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_run_info(out, cfg, cfg.seed, models=[str(m) for m in models], data=str(data))
    write_json(out / "steer.json", report)
    atomic_write_bytes(out / "steer.md", steer_markdown(rows, cfg, len(models)).encode())
    plot_heights(per_model, out / "heights.png")
    return report


def summary_rows(per_model: dict[str, Any]) -> list[dict[str, Any]]:
    """Per goal: medians over models of the reach rates and physics errors."""
    def median(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return float(np.median(kept)) if kept else None

    results = list(per_model.values())
    rows = []
    for goal in GOALS:
        g = [r["goals"][goal] for r in results]
        rows.append({"goal": goal, "truth": median([x["truth"] for x in g]),
                     "unsteered": median([x["unsteered"] for x in g]),
                     "steered": median([x["steered"] for x in g]),
                     "physics_unsteered": median([r["physics_unsteered"] for r in results]),
                     "physics_steered": median([x["physics_steered"] for x in g])})
    return rows


def steer_markdown(rows: list[dict[str, Any]], cfg: SteerConfig, n: int) -> str:
    """The steering summary as a markdown table."""
    fmt = format_value
    lines = [f"Median over {n} model(s); reach rate = share of rollouts whose final object "
             f"height meets the goal (tolerance {cfg.tolerance * 100:g} cm, lift "
             f"{cfg.lift * 100:g} cm, horizon {cfg.horizon}); physics error in z units.", "",
             "| goal | true trajectories | unsteered | steered | physics error unsteered | "
             "physics error steered |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['goal']} | {fmt(r['truth'])} | {fmt(r['unsteered'])} | "
                     f"{fmt(r['steered'])} | {fmt(r['physics_unsteered'])} | "
                     f"{fmt(r['physics_steered'])} |")
    return "\n".join(lines) + "\n"


def plot_heights(per_model: dict[str, Any], path: Path) -> None:
    """Mean object height change over the horizon: truth, unsteered and each goal."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    first = next(iter(per_model.values()))["height_change"]
    for i, key in enumerate(first):
        curves = np.array([r["height_change"][key] for r in per_model.values()]) * 100
        steps = np.arange(1, curves.shape[1] + 1)
        ax.plot(steps, np.median(curves, 0), color="k" if key == "truth" else f"C{i}",
                label=key)
    ax.set(xlabel="predicted step", ylabel="object height change (cm)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
