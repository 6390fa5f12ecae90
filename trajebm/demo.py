"""`trajebm demo`: collect a hand dataset, train the EBMs and baselines, evaluate, report.

Sized to finish in under 15 minutes on 2 CPU cores; every stage is skipped when its output
already exists, so an interrupted demo resumes by running the same command again. Its outputs
go to :data:`DEFAULT_OUT` unless another folder is named (never into the source tree).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import atomic_write_bytes, write_run_info
from trajebm.evaluate import EvalConfig, evaluate, markdown_table
from trajebm.fit import fit_model
from trajebm.modelio import MODEL_FILE
from trajebm.models import MODEL_CLASSES
from trajebm.variants import DEFAULT_MODEL, variant_config


@dataclass
class DemoConfig:
    """Dataset size, training lengths and evaluation settings of the demo."""

    episodes: int = 500
    """Episodes to collect (scripted policy)."""
    length: int = 100
    """Steps per episode."""
    random_every: int = 4
    """Replace every K-th scripted action by a uniform random one."""
    ebm_steps: int = 3000
    """Training steps of the energy-based models."""
    baseline_steps: int = 3000
    """Training steps of the baselines."""
    batch_size: int = 256
    """Windows per training batch."""
    samples: int = 4
    """Samples per test context."""
    horizon: int = 96
    """Predicted steps per rollout."""
    seed: int = 0
    """Seed of the collection, the training and the rollouts."""
    workers: int | None = None
    """Collection threads (default: all cores)."""
    device: str = "cpu"
    """cpu | cuda"""
    render: bool = True
    """Render the frame strip and video."""
    progress: bool = True
    """Show progress bars."""


DATASET_ID = "trajebm/hand-demo-v0"
DEFAULT_OUT = "runs/demo"
"""Where ``trajebm demo`` writes unless told otherwise (``runs/`` is outside the package)."""
MODELS = (DEFAULT_MODEL, "ebm-uncond", "fc", "fc-paper", "ensemble")
"""Named variants (:data:`trajebm.variants.VARIANTS`) the demo trains, with their defaults."""


def run_demo(out_dir: str | os.PathLike, config: DemoConfig | None = None) -> dict[str, Any]:
    """Run the whole pipeline into ``out_dir``; return the evaluation report (with timings)."""
    from trajebm.data import CollectConfig, PolicyConfig, collect

    cfg = config or DemoConfig()
    if cfg.episodes < 20:
        raise UsageError(f"the demo needs at least 20 episodes (a test split), got {cfg.episodes}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    write_run_info(out, cfg, cfg.seed)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = out / "dataset"
    ccfg = CollectConfig(episodes=cfg.episodes, length=cfg.length, seed=cfg.seed,
                         policy=PolicyConfig("scripted", random_every=cfg.random_every))
    collect(ccfg, data, workers=cfg.workers, resume=data.exists(), dataset_id=DATASET_ID,
            progress=cfg.progress)
    timings["collect"] = time.perf_counter() - t0
    runs = []
    for name in MODELS:
        run = out / "runs" / name
        runs.append(run)
        if (run / MODEL_FILE).exists():
            continue
        t = time.perf_counter()
        fcfg = variant_config(name)
        energy_based = MODEL_CLASSES[fcfg.model.kind][1].energy_based
        steps = cfg.ebm_steps if energy_based else cfg.baseline_steps
        fcfg = replace(fcfg, batch_size=cfg.batch_size,
                       train=replace(fcfg.train, steps=steps, seed=cfg.seed,
                                     progress=cfg.progress))
        fit_model(data, run, fcfg, cfg.device, resume=(run / "checkpoint.pt").exists())
        timings[f"train {name}"] = time.perf_counter() - t
    t = time.perf_counter()
    ecfg = EvalConfig(horizon=cfg.horizon, samples=cfg.samples, seed=cfg.seed,
                      device=cfg.device, render=cfg.render, progress=cfg.progress)
    report = evaluate(data, runs, out / "report", ecfg, names=list(MODELS))
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    report["timings"] = {k: round(v, 1) for k, v in timings.items()}
    write_markdown(report, cfg, out / "report" / "README.md")
    return report


def write_markdown(report: dict[str, Any], cfg: DemoConfig, path: Path) -> None:
    """The demo's summary: settings, the results table, timings and the figures."""
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in report["timings"].items())
    lines = [
        "# trajebm demo report", "",
        f"Dataset: {cfg.episodes} Shadow-hand episodes x {cfg.length} steps (scripted policy, "
        f"every {cfg.random_every}th action random); {report['test_episodes']} test "
        f"trajectories, {report['samples']} samples each, k = {report['context']} context "
        f"states, horizon {report['horizon']}. EBMs: {cfg.ebm_steps} training steps; "
        f"baselines: {cfg.baseline_steps}.", "",
        f"FD@t: Fréchet distance at predicted step t; MSE: mean over the horizon; spread: std "
        f"across samples from one start at the last step (diversity); physics error: one "
        f"simulator step from each predicted state vs the predicted next state (the floor row "
        f"gives it for the true states). Units: {report['units']}. The train-vs-test FD "
        f"compares independent trajectories, so rollouts from the test starts themselves can "
        f"fall below it at short horizons.", "",
        markdown_table(report["summary"]), "",
        f"Wall time: {timing}.", "",
        "![FD over the horizon](fd.png)", "",
        "![coordinates: truth (black) vs samples](coordinates.png)", "",
    ]
    if report.get("frames") is None and cfg.render:
        lines += ["Rows: truth, then each model's first sample.", "", "![frames](frames.png)", ""]
        video = report.get("video") or "Every step as video: [rollouts.mp4](rollouts.mp4)"
        lines += [video, ""]
    elif report.get("frames"):
        lines += [report["frames"], ""]
    atomic_write_bytes(path, "\n".join(lines).encode())
