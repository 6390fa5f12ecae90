"""`trajebm evaluate` as a function: score saved models on their test split, write the report."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import write_json, write_run_info
from trajebm.evaluate.config import EvalConfig
from trajebm.evaluate.figures import (
    plot_calibration,
    plot_coordinates,
    plot_fd,
    render_strip,
    render_video,
)
from trajebm.evaluate.metrics import floor_groups
from trajebm.evaluate.physics import physics_checker
from trajebm.evaluate.report import summary_rows
from trajebm.evaluate.scoring import (
    TestSet,
    check_fd_size,
    load_test_set,
    predict_test,
    proper_scores,
    rollout_physics,
    score_predictions,
)
from trajebm.modelio import load_model
from trajebm.models import TrajectoryModel
from trajebm.rollout import check_layout, usable_horizon


def _names(models: list[TrajectoryModel], names: list[str] | None) -> list[str]:
    """The report's name of each model: given, else its kind (``-uncond`` if unconditional),
    numbered where two would be equal."""
    names = names or [f"{m.kind}{'' if m.config.conditional else '-uncond'}" for m in models]
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    return names


def _score_models(models: dict[str, TrajectoryModel], test: TestSet, k: int, cfg: EvalConfig
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray], float | None]:
    """Scores and predictions per model, and the physics error of the true states (None
    without an action-conditional model)."""
    results: dict[str, Any] = {}
    predictions: dict[str, np.ndarray] = {}
    needed = any(m.config.conditional for m in models.values())
    with physics_checker(test.info, needed) as checker:
        for name, model in models.items():
            t0 = time.perf_counter()
            pred = predict_test(model, test, cfg)
            seconds = time.perf_counter() - t0
            predictions[name] = pred
            entry = score_predictions(pred, test, k, cfg,
                                      checker if model.config.conditional else None)
            entry["scores"] = proper_scores(pred, test, k)
            entry.update(kind=model.kind, conditional=model.config.conditional,
                         rollout_seconds=round(seconds, 2),
                         train_seconds=model.meta.get("train_seconds"))
            results[name] = entry
        reference = None
        if checker is not None:
            truth = test.states[:, k : k + cfg.horizon]
            reference = float(rollout_physics(checker, test, truth, k, cfg.physics_episodes,
                                              cfg.physics_every).mean())
    return results, predictions, reference


def evaluate(data: str | os.PathLike, models: list[str | os.PathLike], out_dir: str | os.PathLike,
             config: EvalConfig | None = None, names: list[str] | None = None) -> dict[str, Any]:
    """Evaluate saved models on their test split of ``data``; write ``metrics.json`` and plots.

    All models must have been trained on the same split (seed and test fraction) of ``data``.
    A horizon longer than the test trajectories allow is cut to what they hold, with a warning.
    """
    cfg = config or EvalConfig()
    if not models:
        raise UsageError("give at least one model")
    loaded = [load_model(m, cfg.device) for m in models]
    splits = {tuple(sorted(m.split.items())) for m in loaded}
    if len(splits) > 1:
        raise UsageError("the models were trained on different splits of the data "
                         f"({sorted(splits)}); evaluate them separately")
    k = max(m.config.context for m in loaded)
    test = load_test_set(data, loaded[0].split, k, cfg.max_episodes)
    for m, path in zip(loaded, models, strict=True):
        check_layout(m, test.names, f"dataset ({path})")
    fd_warning = check_fd_size(test)
    scoring = replace(cfg, horizon=usable_horizon(cfg.horizon, test.states.shape[1], k))
    norm = test.stats.normalize
    truth = test.states[:, k : k + scoring.horizon]
    floor = {g: f.tolist() for g, f in floor_groups(
        norm(test.train_states[:, k : k + scoring.horizon]), norm(truth), test.groups(),
        cfg.seed).items()}
    scored = dict(zip(_names(loaded, names), loaded, strict=True))
    results, predictions, reference = _score_models(scored, test, k, scoring)
    report = {"dataset": str(data), "dataset_id": test.info.dataset_id,
              "split": test.split, "test_episodes": len(test.states), "samples": cfg.samples,
              "horizon": scoring.horizon, "context": k,
              "units": "z-scored with the training statistics", "fd_warning": fd_warning,
              "fd_floor": floor["state"], "fd_floor_groups": floor,
              "physics_error_truth": reference, "models": results,
              "summary": summary_rows(results, floor, reference)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_run_info(out, cfg, cfg.seed, models=[str(m) for m in models], data=str(data))
    write_json(out / "metrics.json", report)
    _figures(report, test, predictions, k, scoring, out)
    return report


def _figures(report: dict[str, Any], test: TestSet, predictions: dict[str, np.ndarray], k: int,
             cfg: EvalConfig, out: Path) -> None:
    """The plots, and the rendered strip (or, when that works, also the video) into ``out``;
    what rendering skipped goes into ``report["frames"]`` / ``report["video"]``."""
    if cfg.plots:
        plot_fd(report, out / "fd.png")
        plot_calibration({name: r["scores"]["calibration"]
                          for name, r in report["models"].items()}, out / "calibration.png")
        plot_coordinates(test.states[0], predictions, test.names, k, out / "coordinates.png")
    if cfg.render:
        truth = test.states[0, k : k + cfg.horizon]
        report["frames"] = render_strip(test.info, truth, predictions, out / "frames.png")
        if report["frames"] is None:
            report["video"] = render_video(test.info, truth, predictions, out / "rollouts.mp4")
