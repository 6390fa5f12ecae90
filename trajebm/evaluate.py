"""Score trajectory models on their test split: FD per step, MSE, physics consistency.

Every model is scored on the test trajectories of the split it was trained on (its recorded
split seed and fraction), rolling out from the first k true states of each (feeding the true
actions when action-conditional). Per predicted step t:

* the Fréchet distance between Gaussians fitted to predicted and true states (z-scored with
  the training statistics, so joint angles and object pose weigh alike), for the whole state
  and for the hand's joint positions and the object's pose alone. Every model is scored with
  the same number of points per FD — one per test start — and FDs are averaged over the
  samples drawn from each start: a deterministic model's identical copies are not extra
  samples. The train-vs-test FD at the same number of trajectories is the floor; FD is biased
  upward when the test split is small against the state dimension, so a warning is raised
  below ``MIN_STARTS_PER_DIM`` starts per dimension;
* the MSE to the true trajectory (mean over samples);
* for action-conditional models, the physics-consistency error: MuJoCo is set to the
  predicted s_t (velocities zero unless the state holds them), steps a_t, and the result is
  compared with the predicted s_{t+1}. The same error of the true states is the reference.

The spread (std across samples from one start, averaged over dims) measures diversity.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trajebm.data.dataset import NormStats, TrajectoryDataset
from trajebm.engine.errors import UsageError
from trajebm.engine.metrics import frechet_distance_samples
from trajebm.engine.runinfo import write_json, write_run_info
from trajebm.models import TrajectoryModel, load_model
from trajebm.rollout import check_layout, predict_rollouts

REPORT_STEPS = (10, 50, 96)
MIN_STARTS_PER_DIM = 10


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


@dataclass
class TestSet:
    """The test trajectories of one split, with what scoring needs to know about them."""

    states: np.ndarray
    actions: np.ndarray
    train_states: np.ndarray
    stats: NormStats
    metadata: dict[str, Any]
    split: dict[str, Any]

    @property
    def names(self) -> list[str]:
        return list(self.metadata["trajebm"]["state_names"])

    @property
    def env_id(self) -> str:
        return self.metadata["trajebm"]["env_id"]

    def groups(self) -> dict[str, np.ndarray]:
        """Dimensions scored separately: the whole state, hand joint positions, object pose."""
        names = self.names
        hand = [i for i, n in enumerate(names) if n.startswith("robot0:") and ":vel" not in n]
        pose = ("x", "y", "z", "qw", "qx", "qy", "qz")
        obj = [i for i, n in enumerate(names) if n in {f"object:{c}" for c in pose}]
        groups = {"state": np.arange(len(names))}
        if hand:
            groups["hand"] = np.array(hand)
        if obj:
            groups["object"] = np.array(obj)
        return groups


def load_test_set(data: str | os.PathLike, split: dict[str, Any], context: int,
                  max_episodes: int | None = None) -> TestSet:
    """The test trajectories of ``split`` (seed, test_fraction) of the dataset at ``data``."""
    ds = TrajectoryDataset(data, context=context, test_fraction=split["test_fraction"],
                           seed=split["seed"], dtype="float32")
    states, actions = ds.trajectories("test", limit=max_episodes or None)
    if len(states) < 2:
        raise UsageError(f"{data}: the test split (fraction {split['test_fraction']}, seed "
                         f"{split['seed']}) has {len(states)} trajectories; scoring needs at "
                         f"least 2")
    train_states, _ = ds.trajectories("train")
    return TestSet(states, actions, train_states, ds.state_stats, ds.metadata,
                   {k: split[k] for k in ("seed", "test_fraction")})


def fd_per_step(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """FD at each step between predicted (n, S, H, D) and true (n, H, D) states: one point per
    start in each FD, averaged over the S samples."""
    s, h = pred.shape[1], pred.shape[2]
    return np.array([np.mean([frechet_distance_samples(pred[:, j, t], truth[:, t])
                              for j in range(s)]) for t in range(h)])


def floor_per_step(train: np.ndarray, test: np.ndarray, seed: int = 0) -> np.ndarray:
    """Train-vs-test FD per step at the test split's size (the floor at the same n)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(train), size=min(len(test), len(train)), replace=False)
    return np.array([frechet_distance_samples(train[pick, t], test[:, t])
                     for t in range(test.shape[1])])


class PhysicsChecker:
    """Steps MuJoCo one env step from given states under given actions (batched rollouts)."""

    def __init__(self, env_id: str, include_velocities: bool = False, workers: int = 1) -> None:
        import mujoco

        import trajebm.envs  # noqa: F401  (registers the envs)
        from trajebm.data.collection import RolloutCollector

        self._mujoco = mujoco
        self.collector = RolloutCollector(env_id, include_velocities, workers)
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
            full[i, c.qvel_at : c.qvel_at + c.model.nv] = self.data.qvel
        warm = np.zeros((len(states), c.model.nv))
        return c.simulate(full, warm, actions[:, None])[:, 1]


def physics_gaps(checker: PhysicsChecker, states: np.ndarray, actions: np.ndarray,
                 next_states: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Mean squared z-scored gap between simulated and given next states, per leading index
    of ``states`` (n, m, D) — e.g. per trajectory."""
    sim = checker.step(states.reshape(-1, states.shape[-1]),
                       actions.reshape(-1, actions.shape[-1]))
    gap = (sim - next_states.reshape(sim.shape)) / std
    return np.mean(gap.reshape(len(states), -1) ** 2, axis=1)


def physics_error(checker: PhysicsChecker, states: np.ndarray, actions: np.ndarray,
                  next_states: np.ndarray, std: np.ndarray) -> float:
    """Mean squared z-scored gap between simulated and given next states."""
    return float(np.mean(physics_gaps(checker, states, actions, next_states, std)))


def _physics_triplets(ctx_last: np.ndarray, pred: np.ndarray, actions: np.ndarray,
                      every: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s_t, a_t, s_{t+1}) of predicted rollouts (n, H, D), every ``every``-th step."""
    prev = np.concatenate([ctx_last[:, None], pred[:, :-1]], 1)
    idx = np.arange(0, pred.shape[1], every)
    return prev[:, idx], actions[:, idx], pred[:, idx]


def predict_test(model: TrajectoryModel, test: TestSet, cfg: EvalConfig) -> np.ndarray:
    """Rollouts (n, S, H, D) in original units from the first k states of every test
    trajectory; S = 1 for a deterministic model (more samples would be identical copies)."""
    k = model.config.context
    horizon = min(cfg.horizon, test.states.shape[1] - k)
    acts = test.actions[:, k - 1 : k - 1 + horizon] if model.config.conditional else None
    samples = 1 if model.kind == "fc" else cfg.samples
    return predict_rollouts(model, test.states[:, :k], acts, horizon, samples,
                            cfg.langevin_steps, seed=cfg.seed, device=cfg.device,
                            progress=cfg.progress)


def score_predictions(pred: np.ndarray, test: TestSet, k: int, cfg: EvalConfig,
                      checker: PhysicsChecker | None = None) -> dict[str, Any]:
    """FD per step (per dimension group), MSE per start and step, spread, physics error."""
    norm = test.stats.normalize
    horizon = pred.shape[2]
    z_pred, z_truth = norm(pred), norm(test.states[:, k : k + horizon])
    fd = {g: fd_per_step(z_pred[..., dims], z_truth[..., dims]).tolist()
          for g, dims in test.groups().items()}
    mse = np.mean((z_pred - z_truth[:, None]) ** 2, axis=(1, 3))
    spread = z_pred.std(1).mean((0, 2)) if pred.shape[1] > 1 else np.zeros(horizon)
    entry = {"fd": fd["state"], "fd_groups": fd, "mse": mse.mean(0).tolist(),
             "mse_per_start": mse.mean(1).tolist(), "spread": spread.tolist(),
             "samples": pred.shape[1], "physics_error": None, "physics_per_start": None}
    if checker is not None:
        p = cfg.physics_episodes
        acts = test.actions[:p, k - 1 : k - 1 + horizon]
        trip = _physics_triplets(test.states[:p, k - 1], pred[:p, 0], acts, cfg.physics_every)
        gaps = physics_gaps(checker, *trip, test.stats.std)
        entry["physics_error"], entry["physics_per_start"] = float(gaps.mean()), gaps.tolist()
    return entry


def check_fd_size(test: TestSet) -> str | None:
    """A warning when there are too few test starts for a stable FD in this many dims."""
    n, d = len(test.states), test.states.shape[-1]
    if n >= MIN_STARTS_PER_DIM * d:
        return None
    message = (f"only {n} test trajectories for FD in {d} dimensions (want >= "
               f"{MIN_STARTS_PER_DIM * d}): FDs are biased upward and noisy; compare models "
               f"with each other at the same n, not with the paper or other datasets")
    warnings.warn(message, stacklevel=3)
    return message


def evaluate(data: str | os.PathLike, models: list[str | os.PathLike], out_dir: str | os.PathLike,
             config: EvalConfig | None = None, names: list[str] | None = None) -> dict[str, Any]:
    """Evaluate saved models on their test split of ``data``; write ``metrics.json`` and plots.

    All models must have been trained on the same split (seed and test fraction) of ``data``.
    """
    cfg = config or EvalConfig()
    if not models:
        raise UsageError("give at least one model")
    if cfg.horizon <= 0 or cfg.samples <= 0:
        raise UsageError("horizon and samples must be positive")
    loaded = [load_model(m, cfg.device) for m in models]
    names = names or [f"{m.kind}{'' if m.config.conditional else '-uncond'}" for m in loaded]
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    splits = {tuple(sorted(m.split.items())) for m in loaded}
    if len(splits) > 1:
        raise UsageError("the models were trained on different splits of the data "
                         f"({sorted(splits)}); evaluate them separately")
    k = max(m.config.context for m in loaded)
    test = load_test_set(data, loaded[0].split, k, cfg.max_episodes)
    own = test.metadata["trajebm"]
    for m, path in zip(loaded, models, strict=True):
        check_layout(m, own["state_names"], f"dataset ({path})")
    fd_warning = check_fd_size(test)
    horizon = min(cfg.horizon, test.states.shape[1] - k)
    truth = test.states[:, k : k + horizon]
    norm = test.stats.normalize
    floor = {g: floor_per_step(norm(test.train_states[:, k : k + horizon])[..., dims],
                               norm(truth)[..., dims], cfg.seed).tolist()
             for g, dims in test.groups().items()}
    results: dict[str, Any] = {}
    predictions: dict[str, np.ndarray] = {}
    checker = None
    try:
        for name, model in zip(names, loaded, strict=True):
            t0 = time.perf_counter()
            pred = predict_test(model, test, cfg)
            seconds = time.perf_counter() - t0
            predictions[name] = pred
            if model.config.conditional and checker is None:
                checker = PhysicsChecker(test.env_id, own["include_velocities"])
            entry = score_predictions(pred, test, k, cfg,
                                      checker if model.config.conditional else None)
            entry.update(kind=model.kind, conditional=model.config.conditional,
                         rollout_seconds=round(seconds, 2),
                         train_seconds=model.meta.get("train_seconds"))
            results[name] = entry
        reference = None
        if checker is not None:
            p = cfg.physics_episodes
            acts = test.actions[:p, k - 1 : k - 1 + horizon]
            trip = _physics_triplets(test.states[:p, k - 1], truth[:p], acts, cfg.physics_every)
            reference = physics_error(checker, *trip, test.stats.std)
    finally:
        if checker is not None:
            checker.close()
    report = {"dataset": str(data), "dataset_id": test.metadata.get("dataset_id"),
              "split": test.split, "test_episodes": len(test.states), "samples": cfg.samples,
              "horizon": horizon, "context": k, "units": "z-scored with the training statistics",
              "fd_warning": fd_warning, "fd_floor": floor["state"], "fd_floor_groups": floor,
              "physics_error_truth": reference, "models": results,
              "summary": summary_rows(results, floor, reference)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_run_info(out, cfg, cfg.seed, models=[str(m) for m in models], data=str(data))
    write_json(out / "metrics.json", report)
    if cfg.plots:
        plot_fd(report, out / "fd.png")
        plot_coordinates(test.states[0], predictions, own["state_names"], k,
                         out / "coordinates.png")
    if cfg.render:
        report["frames"] = render_strip(test.env_id, truth[0], predictions, out / "frames.png",
                                        include_velocities=own["include_velocities"])
        if report["frames"] is None:
            report["video"] = render_video(test.env_id, truth[0], predictions,
                                           out / "rollouts.mp4", fps=round(1 / own["dt"]),
                                           include_velocities=own["include_velocities"])
    return report


def summary_rows(results: dict[str, Any], floor: dict[str, list[float]],
                 reference: float | None) -> list[dict[str, Any]]:
    """One row per model: FD at the report steps (whole state; hand and object at the last
    one), mean MSE, spread, physics error — after a floor row."""
    def at(fd: dict[str, list[float]]) -> dict[str, float]:
        values = fd["state"]
        row = {f"fd@{t}": float(values[min(t, len(values)) - 1]) for t in REPORT_STEPS}
        last = min(REPORT_STEPS[-1], len(values))
        for group in ("hand", "object"):
            if group in fd:
                row[f"{group} fd@{last}"] = float(fd[group][last - 1])
        return row

    rows = [{"model": "train vs test (floor)", **at(floor), "mse": None, "spread": None,
             "physics_error": reference, "train_seconds": None}]
    for name, r in results.items():
        rows.append({"model": name, **at(r["fd_groups"]), "mse": float(np.mean(r["mse"])),
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
                 path: Path, size: int = 160, fps: int = 25,
                 include_velocities: bool = False) -> str | None:
    """An MP4 with one labelled panel per row of :func:`render_strip`, every predicted step.

    Returns None on success, else why the video was skipped (no OpenGL or no ffmpeg).
    """
    import imageio.v2 as imageio
    from PIL import Image, ImageDraw

    from trajebm.data.render import render_frames

    try:
        panels = [render_frames(env_id, s, size, size, include_velocities)
                  for s in (truth, *(p[0, 0] for p in predictions.values()))]
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
                 path: Path, frames: int = 6, size: int = 128,
                 include_velocities: bool = False) -> str | None:
    """A PNG grid: rows are truth and each model's first sample, columns evenly spaced steps.

    Returns None on success, else why rendering was skipped (e.g. no OpenGL on the machine).
    """
    from trajebm.data.render import render_frames

    idx = np.linspace(0, len(truth) - 1, frames).astype(int)
    try:
        rows = [render_frames(env_id, s[idx], size, size, include_velocities)
                for s in (truth, *(p[0, 0] for p in predictions.values()))]
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

