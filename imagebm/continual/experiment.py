"""Running the continual-learning experiment (:mod:`imagebm.continual`): every method on
every seed through the split, and the report (``continual.json``, ``.md``, ``.png``)."""

from __future__ import annotations

import io
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from imagebm.continual.learners import (
    EBMLearner,
    EWCLearner,
    JointLearner,
    Learner,
    LwFLearner,
    SILearner,
    SoftmaxLearner,
)
from imagebm.continual.replay import GenerativeReplayLearner
from imagebm.continual.setup import (
    REPLAY_METHODS,
    ContinualConfig,
    ContinualSetup,
    load_setup,
    rows_of,
)
from imagebm.train import to_unit
from trajebm.engine.errors import UsageError
from trajebm.engine.plotting import pyplot
from trajebm.engine.runinfo import atomic_write_bytes, write_json, write_run_info

RESULT_FILE = "continual.json"
PAPER_ACCURACY: dict[str, tuple[float, float]] = {
    "ewc": (0.1980, 0.0005), "si": (0.1967, 0.0009), "mas": (0.1952, 0.0029),
    "lwf": (0.2417, 0.0033), "generative replay (VAE)": (0.4004, 0.0131),
    "ebm": (0.6499, 0.0427)}
"""Split MNIST, accuracy after all 5 tasks, mean and std over 10 seeds (docs/paper.md §3)."""
PAPER_NAMES = {"genreplay": "generative replay (VAE)"}
"""Methods whose row in :data:`PAPER_ACCURACY` has another name."""
LEARNERS: dict[str, type[Learner]] = {
    "ebm": EBMLearner, "finetune": SoftmaxLearner, "ewc": EWCLearner, "si": SILearner,
    "lwf": LwFLearner, "genreplay": GenerativeReplayLearner, "joint": JointLearner}


def method_label(method: str) -> str:
    """The method's name in the report, replay methods marked as such."""
    return f"{method} (replay)" if method in REPLAY_METHODS else method


def _evaluate(setup: ContinualSetup, learner: Learner, task: int) -> tuple[float, list[float]]:
    """Accuracy on the test images of every class seen so far (argmax over those classes),
    and on each seen task's classes."""
    seen = [c for t in setup.tasks[:task + 1] for c in t]
    rows = rows_of(setup.test_labels, tuple(seen))
    images, labels = to_unit(setup.test_images[rows]), setup.test_labels[rows]
    logits = learner.logits(images)
    mask = torch.full((setup.num_classes,), -math.inf)
    mask[seen] = 0.0
    correct = ((logits + mask).argmax(1) == labels).float()
    per_task = [float(correct[torch.isin(labels, torch.tensor(t))].mean())
                for t in setup.tasks[:task + 1]]
    return float(correct.mean()), per_task


def run_method(setup: ContinualSetup, method: str, seed: int,
               on_task: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """One method on one seed through every task: the accuracy curve and per-task accuracies."""
    torch.manual_seed(seed)
    learner = LEARNERS[method](setup)
    curve: list[float] = []
    per_task: list[list[float]] = []
    t0 = time.perf_counter()
    for k, classes in enumerate(setup.tasks):
        shown = tuple(c for t in setup.tasks[:k + 1] for c in t) if learner.cumulative else classes
        rows = rows_of(setup.train_labels, shown)
        with tempfile.TemporaryDirectory(prefix="imagebm-continual-") as work:
            learner.learn(k, setup.train_images[rows], setup.train_labels[rows],
                          seed * 1000 + k, Path(work))
        acc, tasks_acc = _evaluate(setup, learner, k)
        curve.append(acc)
        per_task.append(tasks_acc)
        if on_task is not None:
            on_task(k, acc)
    return {"curve": curve, "task_accuracy": per_task,
            "train_seconds": round(time.perf_counter() - t0, 1)}


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(config: ContinualConfig, tasks: list[tuple[int, ...]],
              runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The report: per method, final accuracy mean/std and the curves, beside the paper's."""
    methods = {}
    for method, seeds in runs.items():
        curves = np.array([r["curve"] for r in seeds])
        finals = curves[:, -1].tolist()
        methods[method] = {
            "final_accuracy": {"mean": float(np.mean(finals)), "std": _std(finals),
                               "per_seed": finals},
            "curve": {"mean": curves.mean(0).tolist(),
                      "std": [_std(c) for c in curves.T.tolist()],
                      "per_seed": curves.tolist()},
            "task_accuracy": [r["task_accuracy"] for r in seeds],
            "train_seconds": [r["train_seconds"] for r in seeds],
            "replay": method in REPLAY_METHODS,
        }
    return {"config": asdict(config), "tasks": [list(t) for t in tasks],
            "seeds": list(range(config.seeds)), "methods": methods,
            "paper": {k: {"mean": m, "std": s} for k, (m, s) in PAPER_ACCURACY.items()},
            "units": "accuracy as a fraction; std over seeds with ddof=1"}


def report_markdown(report: dict[str, Any]) -> str:
    """A table of final accuracy and the per-task curve, beside the paper's split-MNIST numbers."""
    cfg, tasks = report["config"], report["tasks"]
    paper = report["paper"]
    head = " | ".join(f"after task {i + 1}" for i in range(len(tasks)))
    lines = [f"# Class-incremental learning: {cfg['preset']}, {len(tasks)} tasks of "
             f"{cfg['classes_per_task']} classes, {len(report['seeds'])} seeds",
             "",
             f"{cfg['steps']} steps per task for every method. Accuracy (%) on all classes seen "
             f"so far; mean ± std over seeds. Paper: split MNIST, 10 seeds (docs/paper.md §3). "
             f"(replay): replays generated images of earlier tasks.",
             "",
             f"| method | final accuracy | paper | {head} |",
             "|---|---|---|" + "---|" * len(tasks)]
    for method, entry in report["methods"].items():
        final = entry["final_accuracy"]
        ref = paper.get(PAPER_NAMES.get(method, method))
        ref_text = f"{100 * ref['mean']:.2f} ± {100 * ref['std']:.2f}" if ref else "—"
        curve = " | ".join(f"{100 * v:.1f}" for v in entry["curve"]["mean"])
        lines.append(f"| {method_label(method)} | {100 * final['mean']:.2f} ± "
                     f"{100 * final['std']:.2f} | {ref_text} | {curve} |")
    run = {PAPER_NAMES.get(m, m) for m in report["methods"]}
    others = [k for k in paper if k not in run]
    for name in others:
        lines.append(f"| {name} (not run) | — | {100 * paper[name]['mean']:.2f} ± "
                     f"{100 * paper[name]['std']:.2f} |" + " — |" * len(tasks))
    return "\n".join(lines) + "\n"


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """Accuracy on the classes seen so far against tasks seen, mean ± std band per method."""
    plt = pyplot()
    tasks = report["tasks"]
    x = np.arange(1, len(tasks) + 1)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    seen = np.cumsum([len(t) for t in tasks])
    ax.plot(x, 100.0 / seen, "k:", label="chance")
    for method, entry in report["methods"].items():
        mean, std = np.array(entry["curve"]["mean"]), np.array(entry["curve"]["std"])
        line, = ax.plot(x, 100 * mean, marker="o", label=method_label(method))
        ax.fill_between(x, 100 * (mean - std), 100 * (mean + std), color=line.get_color(),
                        alpha=0.15)
    ax.set(xlabel="tasks seen", ylabel="accuracy on classes seen (%)", xticks=x, ylim=(0, 101),
           title=f"{report['config']['preset']}: class-incremental, "
                 f"{len(report['seeds'])} seeds")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run_continual(config: ContinualConfig, out_dir: str | Path,
                  progress: bool = True) -> dict[str, Any]:
    """Run every method on every seed through the split; write the report into ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    if (out / RESULT_FILE).exists():
        raise UsageError(f"{out} already holds {RESULT_FILE}; choose another --out")
    setup = load_setup(config)
    out.mkdir(parents=True, exist_ok=True)
    write_run_info(out, config, None, preset=asdict(setup.image), tasks=setup.tasks,
                   device=str(setup.device), data_root=config.data_root)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in config.methods}
    total = config.seeds * len(config.methods) * len(setup.tasks)
    t0 = time.perf_counter()
    with tqdm(total=total, desc="continual", unit="task", disable=not progress) as bar:
        for seed in range(config.seeds):
            for method in config.methods:
                def step(k: int, acc: float, method: str = method, seed: int = seed) -> None:
                    bar.set_postfix(seed=seed, method=method, task=k + 1, acc=f"{acc:.3f}")
                    bar.update(1)

                runs[method].append(run_method(setup, method, seed, step))
            report = summarise(config, setup.tasks, {m: r for m, r in runs.items() if r})
            report["complete"] = seed == config.seeds - 1
            report["wall_seconds"] = round(time.perf_counter() - t0, 1)
            write_json(out / RESULT_FILE, report)
    atomic_write_bytes(out / "continual.md", report_markdown(report).encode())
    plot_curves(report, out / "continual.png")
    return report
