"""Score trajectory models on a dataset's test split: FD per step, MSE, physics consistency.

Every model rolls out from the first k true states of each test trajectory (feeding the true
actions when action-conditional). Per predicted step t: the Fréchet distance between Gaussians
fitted to predicted and true states (z-scored with the training statistics, so joint angles
and object pose weigh alike), with the train-vs-test FD as the floor; the MSE to the true
trajectory; and, for action-conditional models, the physics-consistency error: MuJoCo is set
to the predicted s_t (velocities zero: the state holds none), steps a_t, and the result is
compared with the predicted s_{t+1}. The same error of the true states is the reference.
The spread (std across samples from one start, averaged over dims) measures diversity.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trajebm.engine.errors import UsageError
from trajebm.engine.metrics import frechet_distance_samples
from trajebm.engine.runinfo import write_json, write_run_info
from trajebm.models import load_model
from trajebm.rollout import check_layout, predict_rollouts

REPORT_STEPS = (10, 50, 96)


@dataclass
class EvalConfig:
    """Evaluation settings: horizon, samples per test context, physics subsampling."""

    horizon: int = 96
    samples: int = 4
    langevin_steps: int | None = None
    max_episodes: int | None = None
    physics_episodes: int = 32
    physics_every: int = 2
    seed: int = 0
    device: str = "cpu"
    plots: bool = True
    render: bool = True
    progress: bool = True


def fd_per_step(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """FD at each step between predicted (n, S, H, D) and true (n, H, D) z-scored states."""
    n, s, h, d = pred.shape
    return np.array([frechet_distance_samples(pred[:, :, t].reshape(n * s, d), truth[:, t])
                     for t in range(h)])


def floor_per_step(train: np.ndarray, test: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    """Train-vs-test FD per step, train subsampled to ``rows`` trajectories (the noise floor)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(train), size=min(rows, len(train)), replace=False)
    return np.array([frechet_distance_samples(train[pick, t], test[:, t])
                     for t in range(test.shape[1])])


class PhysicsChecker:
    """Steps MuJoCo one env step from given states under given actions (batched rollouts)."""

    def __init__(self, env_id: str, workers: int = 1) -> None:
        import mujoco

        import trajebm.envs  # noqa: F401  (registers the envs)
        from trajebm.data.collection import RolloutCollector

        self._mujoco = mujoco
        self.collector = RolloutCollector(env_id, False, workers)
        self.collector.env.reset(seed=0)
        self.data = mujoco.MjData(self.collector.model)
        self.base_qpos = self.collector.env.data.qpos.copy()

    def close(self) -> None:
        self.collector.close()

    def step(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Next states (N, D) after one env step from ``states`` (N, D) under ``actions``."""
        c, mj = self.collector, self._mujoco
        env = c.env
        full = np.empty((len(states), c.nstate))
        mj.mj_getState(c.model, env.data, full[0], c.spec)
        full[:] = full[0]
        for i, s in enumerate(states):
            self.data.qpos[:] = self.base_qpos
            env.layout.write_state(c.model, self.data, s)
            full[i, c.qpos_at : c.qpos_at + c.model.nq] = self.data.qpos
            full[i, c.qvel_at : c.qvel_at + c.model.nv] = 0.0
        warm = np.zeros((len(states), c.model.nv))
        return c.simulate(full, warm, actions[:, None])[:, 1]


def physics_error(checker: PhysicsChecker, states: np.ndarray, actions: np.ndarray,
                  next_states: np.ndarray, std: np.ndarray) -> float:
    """Mean squared z-scored gap between simulated and given next states."""
    sim = checker.step(states.reshape(-1, states.shape[-1]),
                       actions.reshape(-1, actions.shape[-1]))
    gap = (sim - next_states.reshape(sim.shape)) / std
    return float(np.mean(gap**2))


def _physics_triplets(ctx_last: np.ndarray, pred: np.ndarray, actions: np.ndarray,
                      every: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s_t, a_t, s_{t+1}) of predicted rollouts (n, H, D), every ``every``-th step."""
    prev = np.concatenate([ctx_last[:, None], pred[:, :-1]], 1)
    idx = np.arange(0, pred.shape[1], every)
    return prev[:, idx], actions[:, idx], pred[:, idx]


def evaluate(data: str | os.PathLike, models: list[str | os.PathLike], out_dir: str | os.PathLike,
             config: EvalConfig | None = None, names: list[str] | None = None) -> dict[str, Any]:
    """Evaluate saved models on the test split of ``data``; write ``metrics.json`` and plots."""
    from trajebm.data import TrajectoryDataset

    cfg = config or EvalConfig()
    if not models:
        raise UsageError("give at least one model")
    if cfg.horizon <= 0 or cfg.samples <= 0:
        raise UsageError("horizon and samples must be positive")
    loaded = [load_model(m, cfg.device) for m in models]
    names = names or [f"{m.kind}{'' if m.config.conditional else '-uncond'}" for m in loaded]
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    k = max(m.config.context for m in loaded)
    ds = TrajectoryDataset(data, context=k, dtype="float32")
    own = ds.metadata["trajebm"]
    for m, path in zip(loaded, models, strict=True):
        check_layout(m, own["state_names"], f"dataset ({path})")
    test_s, test_a = ds.trajectories("test")
    if len(test_s) < 2:
        raise UsageError("the test split needs at least 2 trajectories")
    if cfg.max_episodes:
        test_s, test_a = test_s[: cfg.max_episodes], test_a[: cfg.max_episodes]
    horizon = min(cfg.horizon, test_s.shape[1] - k)
    train_s, _ = ds.trajectories("train")
    norm = ds.state_stats.normalize
    truth = test_s[:, k : k + horizon]
    floor = floor_per_step(norm(train_s[:, k : k + horizon]), norm(truth),
                           len(test_s) * cfg.samples, cfg.seed)
    results: dict[str, Any] = {}
    predictions: dict[str, np.ndarray] = {}
    checker = None
    try:
        for name, model in zip(names, loaded, strict=True):
            t0 = time.perf_counter()
            acts = test_a[:, k - 1 : k - 1 + horizon] if model.config.conditional else None
            pred = predict_rollouts(model, test_s[:, :k], acts, horizon, cfg.samples,
                                    cfg.langevin_steps, seed=cfg.seed, device=cfg.device,
                                    progress=cfg.progress)
            seconds = time.perf_counter() - t0
            predictions[name] = pred
            fd = fd_per_step(norm(pred), norm(truth))
            mse = np.mean((norm(pred) - norm(truth)[:, None]) ** 2, axis=(0, 1, 3))
            spread = norm(pred).std(1).mean((0, 2)) if cfg.samples > 1 else np.zeros(horizon)
            entry = {"kind": model.kind, "conditional": model.config.conditional,
                     "fd": fd.tolist(), "mse": mse.tolist(), "spread": spread.tolist(),
                     "rollout_seconds": round(seconds, 2),
                     "train_seconds": model.meta.get("train_seconds"), "physics_error": None}
            if model.config.conditional:
                if checker is None:
                    checker = PhysicsChecker(own["env_id"])
                p = cfg.physics_episodes
                trip = _physics_triplets(test_s[:p, k - 1], pred[:p, 0], acts[:p],
                                         cfg.physics_every)
                entry["physics_error"] = physics_error(checker, *trip, ds.state_stats.std)
            results[name] = entry
        reference = None
        if checker is not None:
            p = cfg.physics_episodes
            acts = test_a[:p, k - 1 : k - 1 + horizon]
            trip = _physics_triplets(test_s[:p, k - 1], truth[:p], acts, cfg.physics_every)
            reference = physics_error(checker, *trip, ds.state_stats.std)
    finally:
        if checker is not None:
            checker.close()
    report = {"dataset": str(data), "dataset_id": ds.metadata.get("dataset_id"),
              "test_episodes": len(test_s), "samples": cfg.samples, "horizon": horizon,
              "context": k, "units": "z-scored with the training statistics",
              "fd_floor": floor.tolist(), "physics_error_truth": reference,
              "models": results, "summary": summary_rows(results, floor, reference)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_run_info(out, cfg, cfg.seed, models=[str(m) for m in models], data=str(data))
    write_json(out / "metrics.json", report)
    if cfg.plots:
        plot_fd(report, out / "fd.png")
        plot_coordinates(test_s[0], predictions, own["state_names"], k, out / "coordinates.png")
    if cfg.render:
        report["frames"] = render_strip(own["env_id"], truth[0], predictions, out / "frames.png")
        if report["frames"] is None:
            report["video"] = render_video(own["env_id"], truth[0], predictions,
                                           out / "rollouts.mp4", fps=round(1 / own["dt"]))
    return report


def summary_rows(results: dict[str, Any], floor: np.ndarray, reference: float | None
                 ) -> list[dict[str, Any]]:
    """One row per model: FD at the report steps, mean MSE, physics error (+ floor row)."""
    def at(values: list[float] | np.ndarray) -> dict[str, float]:
        return {f"fd@{t}": float(values[min(t, len(values)) - 1]) for t in REPORT_STEPS}

    rows = [{"model": "train vs test (floor)", **at(floor), "mse": None, "spread": None,
             "physics_error": reference, "train_seconds": None}]
    for name, r in results.items():
        rows.append({"model": name, **at(r["fd"]), "mse": float(np.mean(r["mse"])),
                     "spread": float(r["spread"][-1]),
                     "physics_error": r["physics_error"], "train_seconds": r["train_seconds"]})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The summary rows as a markdown table."""
    keys = list(rows[0])

    def fmt(v: Any) -> str:
        return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fd(report: dict[str, Any], path: Path) -> None:
    """FD (log scale) and MSE over the horizon for every model, with the train-vs-test floor."""
    plt = _pyplot()
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


def plot_coordinates(states: np.ndarray, predictions: dict[str, np.ndarray],
                     names: list[str], k: int, path: Path) -> None:
    """A few joint and object coordinates of test episode 0: truth vs each model's samples."""
    plt = _pyplot()
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


def render_video(env_id: str, truth: np.ndarray, predictions: dict[str, np.ndarray],
                 path: Path, size: int = 160, fps: int = 25) -> str | None:
    """An MP4 with one labelled panel per row of :func:`render_strip`, every predicted step.

    Returns None on success, else why the video was skipped (no OpenGL or no ffmpeg).
    """
    import imageio.v2 as imageio
    from PIL import Image, ImageDraw

    from trajebm.data import render_frames

    try:
        panels = [render_frames(env_id, truth, size, size)]
        panels += [render_frames(env_id, p[0, 0], size, size) for p in predictions.values()]
        frames = np.concatenate(panels, axis=2)
        for t, frame in enumerate(frames):
            image = Image.fromarray(frame)
            draw = ImageDraw.Draw(image)
            for i, name in enumerate(["truth", *predictions]):
                draw.text((i * size + 4, 4), f"{name}  t={t + 1}", fill=(255, 255, 255))
            frames[t] = np.asarray(image)
        imageio.mimsave(path, list(frames), fps=max(1, fps), macro_block_size=1)
    except Exception as err:  # noqa: BLE001 - rendering is optional and backend-dependent
        return f"video skipped: {type(err).__name__}: {err}"
    return None


def render_strip(env_id: str, truth: np.ndarray, predictions: dict[str, np.ndarray],
                 path: Path, frames: int = 6, size: int = 128) -> str | None:
    """A PNG grid: rows are truth and each model's first sample, columns evenly spaced steps.

    Returns None on success, else why rendering was skipped (e.g. no OpenGL on the machine).
    """
    from trajebm.data import render_frames

    idx = np.linspace(0, len(truth) - 1, frames).astype(int)
    try:
        rows = [render_frames(env_id, truth[idx], size, size)]
        rows += [render_frames(env_id, p[0, 0, idx], size, size) for p in predictions.values()]
    except Exception as err:  # noqa: BLE001 - rendering is optional and backend-dependent
        return f"rendering skipped: {type(err).__name__}: {err}"
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 100, grid.shape[0] / 100 + 0.3), dpi=100)
    ax.imshow(grid)
    ax.set_yticks((np.arange(len(rows)) + 0.5) * size, ["truth", *predictions])
    ax.set_xticks((np.arange(frames) + 0.5) * size, [f"t={t + 1}" for t in idx])
    ax.tick_params(labelsize=7, length=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def run_evaluate(args: argparse.Namespace) -> int:
    cfg = EvalConfig(horizon=args.horizon, samples=args.samples, max_episodes=args.episodes,
                     langevin_steps=args.langevin_steps,
                     seed=args.seed, device=args.device, render=not args.no_render,
                     progress=not args.quiet)
    report = evaluate(args.data, args.models, args.out, cfg)
    print(markdown_table(report["summary"]))
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``trajebm evaluate``."""
    p = subparsers.add_parser("evaluate", help="FD / MSE / physics error of trained models")
    p.add_argument("--data", required=True, help="dataset folder (its test split is used)")
    p.add_argument("--models", nargs="+", required=True, help="run folders of `trajebm train`")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--horizon", type=int, default=96)
    p.add_argument("--samples", type=int, default=4, help="samples per test context")
    p.add_argument("--episodes", type=int, default=None, help="use at most N test episodes")
    p.add_argument("--langevin-steps", type=int, default=None,
                   help="EBM sampler steps per predicted state (default: as trained)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--no-render", action="store_true", help="skip the rendered frame strip")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_evaluate)

