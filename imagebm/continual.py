"""Class-incremental continual learning on split digits / split MNIST (PAPER.md §3).

The classes arrive in tasks of ``classes_per_task`` by class id ((0, 1), (2, 3), ...), one task
after another; a task's training images are never shown before its turn, there is no task label
at test time, and after each task every method is scored on the test images of all classes seen
so far, predicting among those classes only. Every method gets the same backbone (the preset's
architecture), the same per-task budget (steps, batch size, learning rate) and the engine's one
:class:`~trajebm.engine.train.Trainer` (a fresh Adam per task):

* ``ebm``: the preset's class-conditional :class:`~imagebm.models.ImageEBM`, trained per task by
  contrastive divergence as the paper trains EBMs: positives are the current task's images,
  negatives Langevin samples (the preset's sampler, a fresh replay buffer per task) conditioned
  on the positives' labels, i.e. on the current task's classes only, so old classes' energies
  are never pushed up; the loss is the engine's ``E(x+) - E(x-) + alpha (E(x+)^2 + E(x-)^2)``.
  The default ``ebm_loss="cd+ce"`` adds ``ce_weight`` x the cross-entropy of ``-E(x, y)`` over
  the current task's classes only (a softmax contrast between the task's own classes, which the
  generative loss alone leaves weak: energies of a task's classes differ by ~0.05 on their data),
  still never raising an old class's energy. ``"cd"`` is the plain generative loss; ``"ce"``
  drops the Langevin negatives (that softmax plus ``alpha`` x the mean squared energy), to show
  what the generative term adds. Test images are classified by ``argmin`` over the seen classes
  of ``E(x, y)`` (:class:`~imagebm.classify.EnergyClassifier`).
* baselines, a :class:`~imagebm.classify.SoftmaxClassifier` (one head over all classes) trained
  by cross-entropy over the classes seen so far: ``finetune`` (the lower bound), ``ewc`` (online
  EWC, diagonal Fisher), ``si`` (Synaptic Intelligence), ``lwf`` (Learning without Forgetting)
  and ``joint`` (every task's data so far, the upper bound).

``imagebm continual --preset digits --out DIR`` calls :func:`run_continual`, which writes
``continual.json`` (per method: final accuracy mean and std over seeds, the per-task curves, the
accuracy on each task's classes), ``continual.md`` (a table beside the paper's numbers),
``continual.png`` and ``run.json``. Accuracies are fractions in [0, 1]; std is over seeds
(``ddof=1``, 0 for one seed).
"""

from __future__ import annotations

import argparse
import copy
import io
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from imagebm.classify import EnergyClassifier, SoftmaxClassifier, predict
from imagebm.models import ImageEBM, ImageEBMConfig, build_model
from imagebm.train import (
    PRESETS,
    ImageTrainConfig,
    chain_init,
    load_training_data,
    model_config,
    to_unit,
)
from trajebm.engine.buffer import ReplayBuffer
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import atomic_write_bytes, write_json, write_run_info
from trajebm.engine.train import LossFn, TensorBatches, Trainer

METHODS = ("ebm", "finetune", "ewc", "si", "lwf", "joint")
EBM_LOSSES = ("cd", "cd+ce", "ce")
CONTINUAL_PRESETS = ("digits", "mnist")
"""Names of :data:`imagebm.train.PRESETS` whose data, backbone and sampler a run uses."""
RESULT_FILE = "continual.json"
PAPER_ACCURACY: dict[str, tuple[float, float]] = {
    "ewc": (0.1980, 0.0005), "si": (0.1967, 0.0009), "mas": (0.1952, 0.0029),
    "lwf": (0.2417, 0.0033), "generative replay (VAE)": (0.4004, 0.0131),
    "ebm": (0.6499, 0.0427)}
"""Split MNIST, accuracy after all 5 tasks, mean and std over 10 seeds (PAPER.md §3)."""


@dataclass
class ContinualConfig:
    """A class-incremental experiment: data and backbone (``preset``), budget, methods, seeds.

    ``steps``, ``batch_size`` and ``lr`` are per task and shared by every method (None: the
    preset's batch size and lr). ``seeds`` N runs seeds 0..N-1. Method settings: ``ebm_loss``
    and ``ce_weight`` (module docstring); ``ewc_lambda`` scales the Fisher penalty
    ``lambda/2 sum F (theta - theta*)^2``, whose Fisher decays by ``ewc_gamma`` per task (online
    EWC) and is estimated from ``fisher_samples`` training images of the task with the model's
    own predicted labels; ``si_c`` scales SI's penalty, ``si_xi`` damps its importance;
    ``lwf_alpha`` weighs LwF's distillation of the previous model's old-class outputs at
    temperature ``lwf_temperature``. The regularisation defaults are the best of a sweep on
    seed 0 of digits at 150 steps (EWC lambda 10..1e6, SI c 0.1..1000, LwF alpha 0.5..10): all
    strengths ended within a point of fine-tuning or below it.
    """

    preset: str = "digits"
    methods: tuple[str, ...] = METHODS
    seeds: int = 5
    classes_per_task: int = 2
    steps: int = 150
    batch_size: int | None = None
    lr: float | None = None
    ebm_loss: str = "cd+ce"
    ce_weight: float = 1.0
    ewc_lambda: float = 1000.0
    ewc_gamma: float = 1.0
    fisher_samples: int = 256
    si_c: float = 0.1
    si_xi: float = 0.1
    lwf_alpha: float = 1.0
    lwf_temperature: float = 2.0
    data_root: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        if self.preset not in CONTINUAL_PRESETS:
            raise UsageError(f"unknown preset {self.preset!r}; choose from "
                             f"{', '.join(CONTINUAL_PRESETS)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UsageError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
                             f"choose from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise UsageError(f"methods repeat: {' '.join(self.methods)}")
        if self.ebm_loss not in EBM_LOSSES:
            raise UsageError(f"unknown ebm_loss {self.ebm_loss!r}; choose from "
                             f"{', '.join(EBM_LOSSES)}")
        if self.seeds < 1 or self.steps < 1 or self.classes_per_task < 1:
            raise UsageError(f"need seeds, steps and classes_per_task >= 1, got {self.seeds}, "
                             f"{self.steps} and {self.classes_per_task}")
        if (self.batch_size is not None and self.batch_size < 1) or self.fisher_samples < 1:
            raise UsageError("batch_size and fisher_samples must be >= 1")
        if self.lr is not None and self.lr <= 0 or self.lwf_temperature <= 0 or self.si_xi <= 0:
            raise UsageError("lr, lwf_temperature and si_xi must be positive")
        if min(self.ce_weight, self.ewc_lambda, self.si_c, self.lwf_alpha) < 0 or not (
                0.0 <= self.ewc_gamma <= 1.0):
            raise UsageError("ce_weight, ewc_lambda, si_c and lwf_alpha must be >= 0 and "
                             "ewc_gamma in [0, 1]")

    def image_config(self) -> ImageTrainConfig:
        """The preset with this experiment's batch size and learning rate."""
        cfg = PRESETS[self.preset]
        return replace(cfg, batch_size=self.batch_size or cfg.batch_size,
                       train=replace(cfg.train, lr=self.lr or cfg.train.lr))


def split_tasks(num_classes: int, classes_per_task: int) -> list[tuple[int, ...]]:
    """The class-incremental split by class id: (0, 1), (2, 3), ... (the last may be smaller)."""
    if not 1 <= classes_per_task <= num_classes:
        raise UsageError(f"classes_per_task must be in [1, {num_classes}], got "
                         f"{classes_per_task}")
    return [tuple(range(c, min(c + classes_per_task, num_classes)))
            for c in range(0, num_classes, classes_per_task)]


def _rows(labels: Tensor, classes: tuple[int, ...]) -> Tensor:
    """Indices of the rows whose label is one of ``classes``."""
    return torch.isin(labels, torch.tensor(classes)).nonzero().squeeze(1)


@dataclass
class ContinualSetup:
    """What every method of a run shares: the preset, its data, the split and the device."""

    image: ImageTrainConfig
    config: ContinualConfig
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int
    tasks: list[tuple[int, ...]]
    device: torch.device
    model_config: ImageEBMConfig = field(init=False)

    def __post_init__(self) -> None:
        self.model_config = model_config(self.image, self.num_classes)

    def fit(self, model: nn.Module, images: Tensor, labels: Tensor, seed: int, work: Path,
            buffer: ReplayBuffer | None = None, loss_fn: LossFn | None = None,
            aux_loss: LossFn | None = None) -> None:
        """Train ``model`` on one task's ``images`` with the engine's Trainer (a fresh Adam).

        Every method gets the same budget: the preset's optimiser settings with this run's
        steps, batch size and lr. Checkpoints go to the temporary ``work`` folder (for the
        divergence guard's rollback); a supervised loss has no energy, so no |E| limit.
        """
        train = replace(self.image.train, steps=self.config.steps, seed=seed, progress=False,
                        snapshot_every=0, validate_every=0, checkpoint_every=self.config.steps)
        if loss_fn is not None:
            train = replace(train, energy_limit=math.inf)
        batches = TensorBatches(images, labels, self.image.batch_size, seed=seed,
                                transform=to_unit)
        Trainer(model, batches, buffer, train, work, self.device, loss_fn=loss_fn,
                aux_loss=aux_loss).fit()


class Learner:
    """One method on one seed: learns tasks in order and gives logits over every class.

    ``cumulative`` learners are shown every task's data so far, the others the current task's.
    """

    cumulative = False

    def __init__(self, setup: ContinualSetup) -> None:
        self.setup = setup

    def learn(self, task: int, images: Tensor, labels: Tensor, seed: int, work: Path) -> None:
        """Train on task ``task``'s ``images`` (uint8) and ``labels``; ``work`` is scratch."""
        raise NotImplementedError

    def logits(self, images: Tensor) -> Tensor:
        """Scores (N, classes) of ``images`` in [0, 1], the highest being the prediction."""
        raise NotImplementedError


class EBMLearner(Learner):
    """The class-conditional EBM: per task, CD (+ optional CE) on the current classes only."""

    def __init__(self, setup: ContinualSetup) -> None:
        super().__init__(setup)
        self.model = build_model(setup.model_config)

    def learn(self, task: int, images: Tensor, labels: Tensor, seed: int, work: Path) -> None:
        cfg, image = self.setup.config, self.setup.image
        classes = self.setup.tasks[task]
        if cfg.ebm_loss == "ce":
            softmax = current_task_cross_entropy(self.model, classes, 1.0, image.train.alpha)
            self.setup.fit(self.model, images, labels, seed, work, loss_fn=softmax)
            return
        shape = tuple(images.shape[1:])
        buffer = ReplayBuffer(image.buffer_size, shape, chain_init(image.init, shape),
                              cond_shape=(), cond_dtype=torch.int64, dtype=torch.uint8,
                              replay_prob=image.replay_prob, seed=seed)
        aux = None
        if cfg.ebm_loss == "cd+ce":
            aux = current_task_cross_entropy(self.model, classes, cfg.ce_weight)
        self.setup.fit(self.model, images, labels, seed, work, buffer=buffer, aux_loss=aux)

    def logits(self, images: Tensor) -> Tensor:
        return predict(EnergyClassifier(copy.deepcopy(self.model)).eval(), images)


def current_task_cross_entropy(model: ImageEBM, classes: tuple[int, ...], weight: float,
                               alpha: float = 0.0) -> LossFn:
    """``weight`` x cross-entropy of ``-E(x, y)`` over ``classes`` only (the positives' task),
    plus ``alpha`` x the mean squared energy of those pairs (the trainer's L2 term)."""
    table = torch.tensor(classes)

    def loss(x: Tensor, y: Tensor | None) -> Tensor:
        ys = table.to(x.device)
        energies = model.class_energies(x, ys)
        target = (y.unsqueeze(1) == ys).float().argmax(1)
        return weight * F.cross_entropy(-energies, target) + alpha * energies.pow(2).mean()

    return loss


class SoftmaxLearner(Learner):
    """``finetune``: cross-entropy over the classes seen so far on the current task alone."""

    def __init__(self, setup: ContinualSetup) -> None:
        super().__init__(setup)
        self.model = SoftmaxClassifier(setup.model_config, setup.num_classes)
        self.seen = 0

    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def cross_entropy(self, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(self.model(x)[:, :self.seen], y)

    def objective(self, x: Tensor, y: Tensor) -> Tensor:
        """The training loss of a batch (cross-entropy plus the method's regulariser)."""
        return self.cross_entropy(x, y)

    def learn(self, task: int, images: Tensor, labels: Tensor, seed: int, work: Path) -> None:
        self.seen = max(self.setup.tasks[task]) + 1
        self.setup.fit(self.model, images, labels, seed, work,
                       loss_fn=lambda x, y: self.objective(x, y))
        self.after_task(images)

    def after_task(self, images: Tensor) -> None:
        """Consolidate what the task taught (importances, anchors, a frozen copy)."""

    def logits(self, images: Tensor) -> Tensor:
        return predict(self.model.eval(), images)


class EWCLearner(SoftmaxLearner):
    """Online EWC: ``lambda/2 sum F (theta - theta*)^2`` with a decayed running Fisher."""

    def __init__(self, setup: ContinualSetup) -> None:
        super().__init__(setup)
        self.fisher: list[Tensor] | None = None
        self.anchor: list[Tensor] = []

    def objective(self, x: Tensor, y: Tensor) -> Tensor:
        loss = self.cross_entropy(x, y)
        if self.fisher is None:
            return loss
        penalty = sum((f * (p - a).pow(2)).sum()
                      for f, p, a in zip(self.fisher, self.params(), self.anchor, strict=True))
        return loss + 0.5 * self.setup.config.ewc_lambda * penalty

    def after_task(self, images: Tensor) -> None:
        cfg, device = self.setup.config, self.setup.device
        params = self.params()
        fisher = [torch.zeros_like(p) for p in params]
        idx = torch.randperm(len(images))[:cfg.fisher_samples]
        self.model.eval()
        for i in idx:
            logits = self.model(to_unit(images[i:i + 1]).to(device))[:, :self.seen]
            loss = F.cross_entropy(logits, logits.argmax(1).detach())
            for f, g in zip(fisher, torch.autograd.grad(loss, params), strict=True):
                f.add_(g.detach().pow(2) / len(idx))
        if self.fisher is not None:
            fisher = [cfg.ewc_gamma * old + new for old, new in zip(self.fisher, fisher,
                                                                    strict=True)]
        self.fisher = fisher
        self.anchor = [p.detach().clone() for p in params]


class SILearner(SoftmaxLearner):
    """Synaptic Intelligence: importance from each parameter's share of the loss's descent."""

    def __init__(self, setup: ContinualSetup) -> None:
        super().__init__(setup)
        self.omega: list[Tensor] | None = None
        self.anchor: list[Tensor] = []
        self._reset_path()

    def _reset_path(self) -> None:
        self.path = [torch.zeros_like(p) for p in self.params()]
        self.start = [p.detach().clone() for p in self.params()]
        self.last: list[Tensor] | None = None
        self.grads: list[Tensor] = []

    def _credit(self) -> None:
        """Add ``-g . delta theta`` of the update since the last batch to the path integral."""
        if self.last is None:
            return
        for w, g, p, before in zip(self.path, self.grads, self.params(), self.last,
                                   strict=True):
            w.sub_(g * (p.detach() - before))

    def objective(self, x: Tensor, y: Tensor) -> Tensor:
        self._credit()
        loss = self.cross_entropy(x, y)
        params = self.params()
        self.grads = [g.detach() for g in torch.autograd.grad(loss, params, retain_graph=True)]
        self.last = [p.detach().clone() for p in params]
        if self.omega is None:
            return loss
        penalty = sum((o * (p - a).pow(2)).sum()
                      for o, p, a in zip(self.omega, params, self.anchor, strict=True))
        return loss + self.setup.config.si_c * penalty

    def after_task(self, images: Tensor) -> None:
        self._credit()
        params, xi = self.params(), self.setup.config.si_xi
        new = [w.clamp_min(0) / ((p.detach() - s).pow(2) + xi)
               for w, p, s in zip(self.path, params, self.start, strict=True)]
        self.omega = new if self.omega is None else [
            o + n for o, n in zip(self.omega, new, strict=True)]
        self.anchor = [p.detach().clone() for p in params]
        self._reset_path()


class LwFLearner(SoftmaxLearner):
    """Learning without Forgetting: distil the previous model's old-class outputs on new data."""

    def __init__(self, setup: ContinualSetup) -> None:
        super().__init__(setup)
        self.teacher: nn.Module | None = None
        self.old = 0

    def objective(self, x: Tensor, y: Tensor) -> Tensor:
        logits = self.model(x)
        loss = F.cross_entropy(logits[:, :self.seen], y)
        if self.teacher is None:
            return loss
        t = self.setup.config.lwf_temperature
        with torch.no_grad():
            target = F.softmax(self.teacher(x)[:, :self.old] / t, dim=1)
        student = F.log_softmax(logits[:, :self.old] / t, dim=1)
        distil = F.kl_div(student, target, reduction="batchmean") * t * t
        return loss + self.setup.config.lwf_alpha * distil

    def after_task(self, images: Tensor) -> None:
        self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.old = self.seen


class JointLearner(SoftmaxLearner):
    """The upper bound: cross-entropy on every task's data seen so far."""

    cumulative = True


LEARNERS: dict[str, type[Learner]] = {
    "ebm": EBMLearner, "finetune": SoftmaxLearner, "ewc": EWCLearner, "si": SILearner,
    "lwf": LwFLearner, "joint": JointLearner}


def load_setup(config: ContinualConfig) -> ContinualSetup:
    """The preset's train and test splits, the task split and the device, checked."""
    image = config.image_config()
    device = resolve_device(config.device)
    train = load_training_data(image, config.data_root, "train")
    test = load_training_data(image, config.data_root, "test")
    tasks = split_tasks(train.num_classes, config.classes_per_task)
    return ContinualSetup(image, config, train.images, train.labels, test.images, test.labels,
                  train.num_classes, tasks, device)


def _evaluate(setup: ContinualSetup, learner: Learner, task: int) -> tuple[float, list[float]]:
    """Accuracy on the test images of every class seen so far (argmax over those classes),
    and on each seen task's classes."""
    seen = [c for t in setup.tasks[:task + 1] for c in t]
    rows = _rows(setup.test_labels, tuple(seen))
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
        rows = _rows(setup.train_labels, shown)
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
             f"so far; mean ± std over seeds. Paper: split MNIST, 10 seeds (PAPER.md §3).",
             "",
             f"| method | final accuracy | paper | {head} |",
             "|---|---|---|" + "---|" * len(tasks)]
    for method, entry in report["methods"].items():
        final = entry["final_accuracy"]
        ref = paper.get(method)
        ref_text = f"{100 * ref['mean']:.2f} ± {100 * ref['std']:.2f}" if ref else "—"
        curve = " | ".join(f"{100 * v:.1f}" for v in entry["curve"]["mean"])
        lines.append(f"| {method} | {100 * final['mean']:.2f} ± {100 * final['std']:.2f} | "
                     f"{ref_text} | {curve} |")
    others = [k for k in paper if k not in report["methods"]]
    for name in others:
        lines.append(f"| {name} (not run) | — | {100 * paper[name]['mean']:.2f} ± "
                     f"{100 * paper[name]['std']:.2f} |" + " — |" * len(tasks))
    return "\n".join(lines) + "\n"


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """Accuracy on the classes seen so far against tasks seen, mean ± std band per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = report["tasks"]
    x = np.arange(1, len(tasks) + 1)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    seen = np.cumsum([len(t) for t in tasks])
    ax.plot(x, 100.0 / seen, "k:", label="chance")
    for method, entry in report["methods"].items():
        mean, std = np.array(entry["curve"]["mean"]), np.array(entry["curve"]["std"])
        line, = ax.plot(x, 100 * mean, marker="o", label=method)
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


def run_continual_command(args: argparse.Namespace) -> int:
    given = {k: getattr(args, k) for k in (
        "preset", "methods", "seeds", "classes_per_task", "steps", "batch_size", "lr",
        "ebm_loss", "ce_weight", "ewc_lambda", "ewc_gamma", "si_c", "lwf_alpha",
        "lwf_temperature", "data_root", "device")}
    config = ContinualConfig(**{k: v for k, v in given.items() if v is not None})
    report = run_continual(config, args.out, progress=not args.quiet)
    print(report_markdown(report))
    print(f"wrote {Path(args.out) / RESULT_FILE}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``imagebm continual``."""
    d = ContinualConfig()
    p = subparsers.add_parser("continual", help="class-incremental split digits / MNIST: the "
                              "conditional EBM against finetune, EWC, SI, LwF and joint")
    p.add_argument("--preset", default=d.preset, help=f"one of: {', '.join(CONTINUAL_PRESETS)}")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"any of: {' '.join(METHODS)} (default all)")
    p.add_argument("--seeds", type=int, default=None, help=f"seeds 0..N-1 (default {d.seeds})")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--classes-per-task", type=int, default=None,
                   help=f"default {d.classes_per_task}")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps per task, every method (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--lr", type=float, default=None, help="default: the preset's")
    p.add_argument("--ebm-loss", default=None, help=f"{' | '.join(EBM_LOSSES)} "
                   f"(default {d.ebm_loss})")
    p.add_argument("--ce-weight", type=float, default=None, help=f"default {d.ce_weight}")
    p.add_argument("--ewc-lambda", type=float, default=None, help=f"default {d.ewc_lambda:g}")
    p.add_argument("--ewc-gamma", type=float, default=None, help=f"default {d.ewc_gamma}")
    p.add_argument("--si-c", type=float, default=None, help=f"default {d.si_c:g}")
    p.add_argument("--lwf-alpha", type=float, default=None, help=f"default {d.lwf_alpha}")
    p.add_argument("--lwf-temperature", type=float, default=None,
                   help=f"default {d.lwf_temperature}")
    p.add_argument("--data-root", default=None, help="dataset files (mnist only)")
    p.add_argument("--device", default=None, help="cpu | cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_continual_command)
