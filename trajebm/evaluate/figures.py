"""Figures of an evaluation: FD and MSE over the horizon, coordinates over time, and the
rollouts rendered offscreen as a frame strip or a video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trajebm.data.metadata import DatasetInfo
from trajebm.engine.plotting import pyplot


def plot_fd(report: dict[str, Any], path: Path) -> None:
    """FD (log scale) and MSE over the horizon for every model, with the train-vs-test floor."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps = np.arange(1, report["horizon"] + 1)
    ax1.plot(steps, report["fd_floor"], "k--", label="train vs test")
    for name, r in report["models"].items():
        ax1.plot(steps, r["fd"], label=name)
        ax2.plot(steps, r["mse"], label=name)
    ax1.set(yscale="log", xlabel="predicted step", ylabel="Fréchet distance (z units)")
    ax2.set(yscale="log", xlabel="predicted step", ylabel="MSE to truth (z units)")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_calibration(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Observed vs nominal coverage of the samples' central intervals, per model: on the
    diagonal when calibrated, below it when over-confident, above when too wide."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    for name, curve in curves.items():
        ax.plot(curve["nominal"], curve["observed"], "o-", ms=3, label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal coverage of the central interval",
           ylabel="observed coverage (true coordinates inside)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_coordinates(states: np.ndarray, predictions: dict[str, np.ndarray],
                     names: list[str], k: int, path: Path) -> None:
    """A few joint and object coordinates of test episode 0: truth vs each model's samples."""
    plt = pyplot()
    dims = [names.index(n) for n in names if n.endswith(("FFJ2", "THJ4"))][:2]
    dims += [names.index(n) for n in ("object:z", "object:qw") if n in names]
    dims = dims or list(range(min(4, len(names))))
    fig, axes = plt.subplots(len(dims), len(predictions), squeeze=False,
                             figsize=(3.6 * len(predictions), 2.2 * len(dims)))
    t_true = np.arange(len(states))
    for col, (model, pred) in enumerate(predictions.items()):
        t_pred = np.arange(k, k + pred.shape[2])
        for row, d in enumerate(dims):
            ax = axes[row][col]
            ax.plot(t_pred, pred[0, :, :, d].T, color="C1", alpha=0.5, lw=0.8)
            ax.plot(t_true, states[:, d], color="k", lw=1.2)
            ax.set_title(f"{model}: {names[d]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _rendered_rows(info: DatasetInfo, truth: np.ndarray, predictions: dict[str, np.ndarray],
                   size: int, steps: np.ndarray | slice) -> list[np.ndarray]:
    """Frames (N, size, size, 3) of the truth and of each model's first sample at ``steps``."""
    from trajebm.data.render import render_frames

    return [render_frames(info.env_id, s[steps], size, size, info.include_velocities)
            for s in (truth, *(p[0, 0] for p in predictions.values()))]


def render_video(info: DatasetInfo, truth: np.ndarray, predictions: dict[str, np.ndarray],
                 path: Path, size: int = 160) -> str | None:
    """An MP4 with one labelled panel per row of :func:`render_strip`, every predicted step, at
    the env's frame rate.

    Returns None on success, else why the video was skipped (no OpenGL or no ffmpeg).
    """
    from trajebm.data.render import render_panels

    fps = max(1, round(1 / info.dt)) if info.dt else 25
    panels = {"truth": truth, **{name: p[0, 0] for name, p in predictions.items()}}
    return render_panels(info.env_id, panels, path, size, fps, info.include_velocities)


def render_strip(info: DatasetInfo, truth: np.ndarray, predictions: dict[str, np.ndarray],
                 path: Path, frames: int = 6, size: int = 128) -> str | None:
    """A PNG grid: rows are truth and each model's first sample, columns evenly spaced steps.

    Returns None on success, else why rendering was skipped (e.g. no OpenGL on the machine).
    """
    idx = np.linspace(0, len(truth) - 1, frames).astype(int)
    try:
        rows = _rendered_rows(info, truth, predictions, size, idx)
    except Exception as err:  # noqa: BLE001 - rendering is optional and backend-dependent
        return f"rendering skipped: {type(err).__name__}: {err}"
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 100, grid.shape[0] / 100 + 0.3), dpi=100)
    ax.imshow(grid)
    ax.set_yticks((np.arange(len(rows)) + 0.5) * size, ["truth", *predictions])
    ax.set_xticks((np.arange(frames) + 0.5) * size, [f"t={t + 1}" for t in idx])
    ax.tick_params(labelsize=7, length=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None
