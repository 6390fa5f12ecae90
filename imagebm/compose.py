"""Compose separately trained conditional EBMs: sample the sum of their energies (docs/paper.md §3).

``imagebm compose --runs RUN_A RUN_B --labels LA LB --out DIR`` samples
``exp(-(E_A(x | LA) + E_B(x | LB)))`` — a product of experts, each with its own condition
(:class:`trajebm.engine.sampling.Expert`) — with one Langevin chain per image from the runs'
fresh-chain noise, and writes ``samples.npy`` (N, C, H, W) in [0, 1], ``samples.png`` and
``run.json``. The chains use the first run's sampler (step size, noise) and evaluation gradient
clip, for as many steps as that run's fresh samples take unless told (200 for persistent runs,
the training chain's length for short-run runs, :func:`imagebm.presets.short_run`).

:func:`compositional_generalisation` is the paper's point at CPU scale: on procedural dSprites,
one conditional model per factor and one model conditioned on the joint combination are trained
on data with some factor combinations held out; both are asked for every combination, and
factor classifiers trained on all the data check each sample. The score is the fraction of
samples with every requested factor right; the held-out combinations are the test of
compositional generalisation. The score means something only where the classifiers read real
images right: :func:`check_classifiers` measures each one's accuracy on held-out real images,
which the report states beside :data:`CLASSIFIER_TARGET` (at 16x16 the shape classifier falls
short, at 32x32, ``--preset dsprites-32``, none does). ``imagebm compose-experiment --out DIR``
runs it and writes ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from imagebm.datasets import (
    FactorBins,
    combination_index,
    factor_classes,
    factor_names,
    load_dataset,
)
from imagebm.grid import save_grid
from imagebm.metrics import DomainClassifier, train_domain_classifier
from imagebm.presets import ImageTrainConfig, preset
from imagebm.train import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    ImageRun,
    chain_init,
    load_image_run,
    output_folder,
    train_images,
)
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import (
    atomic_save_npy,
    jsonable,
    write_json,
    write_run_info,
)
from trajebm.engine.sampling import Expert, langevin


@dataclass
class ComposeConfig:
    """Sampler of a composition: ``num`` chains of ``langevin_steps`` steps from noise."""

    num: int = 64
    """Chains (images) to sample."""
    langevin_steps: int | None = None
    """Langevin steps from noise (default: the first run's fresh-sample chain, 200 steps for
    persistent runs)."""
    grad_clip: float | None = None
    """Gradient clip (default: the first run's evaluation clip)."""
    temperature: float = 1.0
    """Multiplies the chains' noise variance."""
    seed: int = 0
    """Seeds the chains' starts and noise."""

    def __post_init__(self) -> None:
        if self.num < 1 or (self.langevin_steps is not None and self.langevin_steps < 1):
            raise UsageError("num and langevin_steps must be >= 1")
        if self.temperature <= 0 or (self.grad_clip is not None and self.grad_clip <= 0):
            raise UsageError("temperature and grad_clip must be positive")


def chain_steps(run: ImageRun) -> int:
    """Steps of the run's fresh-sample chain: ``eval_chunks`` x ``eval_chunk_steps``."""
    return run.config.eval_chunks * run.config.eval_chunk_steps


def _label_rows(label: int | Tensor, classes: int, num: int, source: Path) -> Tensor:
    """One int64 label per chain, checked to lie in the run's classes."""
    rows = (torch.full((num,), int(label), dtype=torch.int64)
            if isinstance(label, (int, np.integer)) else torch.as_tensor(label))
    if rows.shape != (num,) or rows.is_floating_point():
        raise UsageError(f"labels for {source} must be one integer or {num} integers")
    if bool(((rows < 0) | (rows >= classes)).any()):
        raise UsageError(f"label(s) {sorted(set(rows.tolist()))} out of range for {source}: "
                         f"its model has {classes} classes (0..{classes - 1})")
    return rows


def check_composable(runs: Sequence[ImageRun], labels: Sequence[int | Tensor],
                     num: int) -> list[Tensor]:
    """Per-chain labels of each run; UsageError unless the runs can be summed as asked.

    Every run must be class-conditional with the same image shape, and take one label (or one
    per chain) inside its classes.
    """
    if not runs:
        raise UsageError("compose needs at least one run")
    if len(labels) != len(runs):
        raise UsageError(f"{len(runs)} runs but {len(labels)} labels: give one label per run")
    shape = None
    rows = []
    for run, label in zip(runs, labels, strict=True):
        m = run.model.config
        if m.num_classes == 0:
            raise UsageError(f"{run.path}: the model is unconditional; compose needs "
                             f"class-conditional runs")
        here = (m.channels, m.image_size, m.image_size)
        if shape is not None and here != shape:
            raise UsageError(f"{run.path} makes {'x'.join(map(str, here))} images but "
                             f"{runs[0].path} makes {'x'.join(map(str, shape))}; the models "
                             f"must share image size and channels")
        shape = here
        rows.append(_label_rows(label, m.num_classes, num, run.path))
    return rows


def compose_images(runs: Sequence[ImageRun | str | os.PathLike], labels: Sequence[int | Tensor],
                   config: ComposeConfig | None = None,
                   device: str | torch.device | None = None) -> Tensor:
    """``config.num`` samples (in [0, 1], on the CPU) of the sum of the runs' energies.

    ``labels[i]`` conditions ``runs[i]``: one class for every chain, or a tensor with one per
    chain (so one call can ask for several combinations). Checked by :func:`check_composable`.
    """
    cfg = config or ComposeConfig()
    device = resolve_device(device)
    loaded = [r if isinstance(r, ImageRun) else load_image_run(r) for r in runs]
    rows = check_composable(loaded, labels, cfg.num)
    first = loaded[0]
    m = first.model.config
    clip = first.config.eval_grad_clip if cfg.grad_clip is None else cfg.grad_clip
    sampler = replace(first.config.sampler, steps=cfg.langevin_steps or chain_steps(first),
                      grad_clip=clip, temperature=cfg.temperature, bounds=(0.0, 1.0))
    experts = [Expert(run.model.to(device).eval(), y.to(device))
               for run, y in zip(loaded, rows, strict=True)]
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    x = chain_init(first.config.init, (m.channels, m.image_size, m.image_size))(
        cfg.num, None, generator)
    return langevin(experts, x.to(device), None, sampler).cpu()


def compose_to_folder(run_dirs: Sequence[str | os.PathLike], labels: Sequence[int],
                      out_dir: str | os.PathLike, config: ComposeConfig | None = None,
                      device: str | torch.device | None = None) -> tuple[Path, Tensor]:
    """Compose the runs (:func:`compose_images`, checked before anything is written) into
    ``out_dir``: ``samples.npy``, ``samples.png`` and ``run.json``."""
    out = output_folder(out_dir, "composed")
    runs = [load_image_run(r) for r in run_dirs]
    cfg = config or ComposeConfig()
    check_composable(runs, labels, cfg.num)
    cfg = replace(cfg, langevin_steps=cfg.langevin_steps or chain_steps(runs[0]))
    images = compose_images(runs, labels, cfg, device)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(images.numpy().astype(np.float32), out / "samples.npy")
    save_grid(images[:256], out / "samples.png")
    write_run_info(out, cfg, cfg.seed, runs=[str(r) for r in run_dirs], labels=list(labels))
    return out, images


# ---------------------------------------------------------------- compositional generalisation


def _default_hold_out() -> tuple[dict[str, int], ...]:
    return ({"shape": 2, "scale": 0, "x": 0}, {"shape": 0, "scale": 1, "x": 1},
            {"shape": 1, "scale": 0, "x": 1})


COMPOSITION_PRESETS = ("dsprites-16", "dsprites-16-shortrun", "dsprites-32",
                       "dsprites-32-shortrun")
"""Training settings the experiment's models may take (procedural dSprites, CPU-sized); the
image size is the preset's."""
CLASSIFIER_TARGET = 0.95
"""Accuracy on real test images that each factor classifier should reach for its reading of
the samples to be trusted."""


@dataclass
class CompositionConfig:
    """The compositional-generalisation experiment (module docstring)."""

    factors: tuple[str, ...] = ("shape", "scale", "x")
    """The factors, one conditional run each (plus one run on their joint combination)."""
    factor_bins: dict[str, int] = field(default_factory=lambda: {"scale": 2, "x": 2})
    """Bins per factor."""
    hold_out: tuple[dict[str, int], ...] = field(default_factory=_default_hold_out)
    """Combinations left out of every model's training data."""
    preset: str = "dsprites-16"
    """Training settings of every model, and so the image size (dsprites-32: 32x32; the
    short-run ones train by short chains from noise)."""
    steps: int = 400
    """Training steps per model."""
    batch_size: int = 64
    """Training images per step."""
    limit: int = 20_000
    """Training images rendered per model (before the hold-out)."""
    num: int = 50
    """Samples per combination and method."""
    sampler: ComposeConfig = field(default_factory=ComposeConfig)
    """The composed and the joint model's sampler (its num is set per combination)."""
    classifier_steps: int = 1000
    """Training steps of each factor's classifier."""
    seed: int = 0
    """Seeds the runs, the classifiers (unless classifier_seed is set) and the test data."""
    classifier_seed: int | None = None
    """Seeds the factor classifiers and their training images (default: the seed). Fixing it
    reads every seed's samples with one set of classifiers, so seeds differ only in the models."""

    def __post_init__(self) -> None:
        self.factors = tuple(self.factors)
        self.hold_out = tuple(dict(c) for c in self.hold_out)
        if not self.factors or not self.hold_out:
            raise UsageError("need at least one factor and one held-out combination")
        bad = [c for c in self.hold_out if set(c) != set(self.factors)]
        if bad:
            raise UsageError(f"held-out combinations must give every factor of "
                             f"{', '.join(self.factors)}: {bad}")
        if self.preset not in COMPOSITION_PRESETS:
            raise UsageError(f"preset must be one of {', '.join(COMPOSITION_PRESETS)}, "
                             f"got {self.preset!r}")
        if self.num < 1 or self.classifier_steps < 1:
            raise UsageError("num and classifier_steps must be >= 1")

    @property
    def classifiers_seed(self) -> int:
        """The seed the factor classifiers are trained with."""
        return self.seed if self.classifier_seed is None else self.classifier_seed

    def run_config(self, label_factor: str) -> ImageTrainConfig:
        """The training config of the run labelled by ``label_factor`` (one factor or joint)."""
        return preset(self.preset, label_factor=label_factor, factor_bins=dict(self.factor_bins),
                      hold_out=self.hold_out, limit=self.limit, batch_size=self.batch_size,
                      steps=self.steps, seed=self.seed)


def _trained(cfg: ImageTrainConfig, folder: Path, device: torch.device,
             progress: bool) -> ImageRun:
    """The finished run in ``folder`` if it was trained with ``cfg``; else its training,
    continued exactly from the checkpoint an interrupted experiment left (same config only)."""
    done, interrupted = (folder / MODEL_FILE).exists(), (folder / CHECKPOINT_FILE).exists()
    if done or interrupted:
        run = load_image_run(folder, device)  # a checkpointed run's config comes from run.json
        if jsonable(run.config) != jsonable(cfg):
            what = "a run" if done else "an interrupted run"
            raise UsageError(f"{folder} holds {what} with another config; use a new --out")
        if done:
            return run
    train_images(cfg, folder, device=device, resume=interrupted, progress=progress)
    return load_image_run(folder, device)


def _classifier(factor: str, cfg: CompositionConfig, size: int, folder: Path) -> DomainClassifier:
    """A classifier of ``factor``'s (binned) values, trained on all the data (no hold-out)."""
    seed = cfg.classifiers_seed
    path = folder / f"{factor}-{factor_classes(factor, cfg.factor_bins)}-{cfg.limit}-" \
        f"{cfg.classifier_steps}-{seed}.pt"
    if path.exists():
        return DomainClassifier.load(path)
    data = load_dataset("dsprites-procedural", image_size=size, limit=cfg.limit,
                        seed=seed + 1, label_factor=factor, factor_bins=cfg.factor_bins)
    classifier = train_domain_classifier(data.float(), data.labels, data.num_classes,
                                         steps=cfg.classifier_steps, seed=seed)
    classifier.save(path)
    return classifier


def factor_classifiers(cfg: CompositionConfig, size: int,
                       folder: str | os.PathLike) -> dict[str, DomainClassifier]:
    """A classifier per factor of ``size`` x ``size`` images, trained on all the data (no
    hold-out), or the one saved in ``folder`` by an earlier call with the same settings."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return {f: _classifier(f, cfg, size, path) for f in cfg.factors}


@torch.no_grad()
def _predict(classifiers: dict[str, DomainClassifier], images: Tensor) -> dict[str, np.ndarray]:
    return {f: torch.cat([c(chunk).argmax(1).cpu() for chunk in images.split(500)]).numpy()
            for f, c in classifiers.items()}


def _scores(predicted: dict[str, np.ndarray], wanted: dict[str, np.ndarray],
            groups: np.ndarray, n_groups: int) -> list[dict[str, Any]]:
    """Per group: how many, fraction with every factor right, and per-factor fractions."""
    right = {f: predicted[f] == wanted[f] for f in wanted}
    every = np.logical_and.reduce(list(right.values()))
    out = []
    for g in range(n_groups):
        m = groups == g
        n = int(m.sum())
        out.append({"n": n, "all_right": float(every[m].mean()) if n else None,
                    **{f: float(r[m].mean()) if n else None for f, r in right.items()}})
    return out


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return float(np.mean(values)) if values else None


def _models(cfg: CompositionConfig, out: Path, device: torch.device, progress: bool,
            timings: dict[str, float]) -> tuple[dict[str, ImageRun], dict[str, DomainClassifier]]:
    """The factor and joint runs (trained or reused) and the factors' classifiers."""
    runs = {}
    for name, spec in [(f, f) for f in cfg.factors] + [("joint", "+".join(cfg.factors))]:
        t0 = time.perf_counter()
        runs[name] = _trained(cfg.run_config(spec), out / f"run-{name}", device, progress)
        timings[f"train {name} (s)"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    classifiers = factor_classifiers(cfg, runs["joint"].model.config.image_size,
                                     out / "classifiers")
    timings["classifiers (s)"] = round(time.perf_counter() - t0, 1)
    return runs, classifiers


def check_classifiers(cfg: CompositionConfig, classifiers: dict[str, DomainClassifier],
                      size: int) -> dict[str, Any]:
    """The factor classifiers on held-out real ``size`` x ``size`` images (the test split,
    which no model or classifier trained on; at least 2,000, 20 per combination).

    Returns ``n`` (images), ``accuracy`` (per factor, the fraction whose value its classifier
    reads right) and ``combinations``: per combination (in product order) the same scores as
    the samples', the experiment's ceiling.
    """
    bins = cfg.factor_bins
    combinations = int(np.prod([factor_classes(f, bins) for f in cfg.factors]))
    test = {f: load_dataset("dsprites-procedural", split="test", image_size=size,
                            limit=max(2000, 20 * combinations), seed=cfg.seed, label_factor=f,
                            factor_bins=bins) for f in cfg.factors}
    first = test[cfg.factors[0]]
    wanted = {f: test[f].labels.numpy() for f in cfg.factors}
    group = np.array([combination_index({f: wanted[f][i] for f in cfg.factors}, cfg.factors,
                                        bins) for i in range(len(first))])
    predicted = _predict(classifiers, first.float())
    return {"n": len(first),
            "accuracy": {f: float(np.mean(predicted[f] == wanted[f])) for f in cfg.factors},
            "combinations": _scores(predicted, wanted, group, combinations)}


def compositional_generalisation(out_dir: str | os.PathLike,
                                 config: CompositionConfig | None = None,
                                 device: str | torch.device | None = None,
                                 progress: bool = True) -> dict[str, Any]:
    """Train (or reuse) the factor and joint runs in ``out_dir``, score both; write the report.

    Returns the report (also ``report.json`` and ``report.md``): per combination, the fraction
    of composed and of joint samples with every factor right (and per factor), the same for
    test images of that combination (the classifiers' ceiling), means over the held-out and
    the seen combinations, and each factor classifier's accuracy on real test images
    (``classifiers``, :func:`check_classifiers`). Existing runs and classifiers in
    ``out_dir`` are reused.
    """
    cfg = config or CompositionConfig()
    device = resolve_device(device)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    timings: dict[str, float] = {}
    runs, classifiers = _models(cfg, out, device, progress, timings)
    bins: FactorBins = cfg.factor_bins
    # in product order, so combination i has the joint label i (combination_index)
    combos = [dict(zip(cfg.factors, values, strict=True)) for values in
              itertools.product(*(range(factor_classes(f, bins)) for f in cfg.factors))]
    held = [c in cfg.hold_out for c in combos]
    group = np.repeat(np.arange(len(combos)), cfg.num)
    wanted = {f: np.array([c[f] for c in combos])[group] for f in cfg.factors}
    sampler = replace(cfg.sampler, num=len(group), langevin_steps=cfg.sampler.langevin_steps
                      or chain_steps(runs[cfg.factors[0]]))
    t0 = time.perf_counter()
    composed = compose_images([runs[f] for f in cfg.factors],
                              [torch.from_numpy(wanted[f]) for f in cfg.factors], sampler, device)
    joint = compose_images([runs["joint"]], [torch.from_numpy(group)], sampler, device)
    timings["sampling (s)"] = round(time.perf_counter() - t0, 1)
    check = check_classifiers(cfg, classifiers, runs["joint"].model.config.image_size)
    results = {"composed": _scores(_predict(classifiers, composed), wanted, group, len(combos)),
               "joint": _scores(_predict(classifiers, joint), wanted, group, len(combos)),
               "test data": check.pop("combinations")}
    names = {f: factor_names(f, bins) for f in cfg.factors}
    rows = [{"combination": c, "names": {f: names[f][c[f]] for f in cfg.factors},
             "held_out": held[i], **{k: v[i] for k, v in results.items()}}
            for i, c in enumerate(combos)]
    summary = {kind: {method: _mean([r[method] for r in rows if r["held_out"] == is_held],
                                    "all_right") for method in results}
               for kind, is_held in (("held_out", True), ("seen", False))}
    chance = float(np.prod([1.0 / factor_classes(f, bins) for f in cfg.factors]))
    report = {"config": jsonable(cfg), "summary": summary, "chance": chance,
              "image_size": runs["joint"].model.config.image_size,
              "classifiers": {**check, "target": CLASSIFIER_TARGET},
              "chain_steps": sampler.langevin_steps,
              "combinations": rows, "timings": timings, "device": str(device)}
    _save_sample_grids(out, composed, joint, held, cfg.num)
    write_json(out / "report.json", report)
    (out / "report.md").write_text(_markdown(report, cfg))
    return report


def _save_sample_grids(out: Path, composed: Tensor, joint: Tensor, held: list[bool],
                       num: int) -> None:
    """One row of up to 16 samples per held-out combination, per method."""
    per_row = min(num, 16)
    picks = [i * num + j for i, h in enumerate(held) if h for j in range(per_row)]
    for name, images in (("composed", composed), ("joint", joint)):
        save_grid(images[picks], out / f"held-out-{name}.png", nrow=per_row)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _classifier_line(check: dict[str, Any]) -> str:
    """The factor classifiers' accuracy on real test images, and whether each reaches the
    target."""
    accuracy = ", ".join(f"{f} {a:.3f}" for f, a in check["accuracy"].items())
    short = [f for f, a in check["accuracy"].items() if a < check["target"]]
    verdict = (f"below {check['target']} for {', '.join(short)}: that reading of the samples "
               f"is unreliable" if short else f"all at least {check['target']}")
    return (f"Factor classifiers' accuracy on {check['n']} real test images (never trained "
            f"on): {accuracy} ({verdict}).")


def _classifier_seed(cfg: CompositionConfig) -> str:
    """Where the classifiers' seed differs from the experiment's, say so."""
    seed = cfg.classifiers_seed
    return "" if seed == cfg.seed else f" (classifiers: seed {seed})"


def _markdown(report: dict[str, Any], cfg: CompositionConfig) -> str:
    """The report as a short Markdown page."""
    s = report["summary"]
    size = report["image_size"]
    lines = [
        f"# Compositional generalisation on procedural dSprites {size}×{size}",
        "",
        f"Factors {', '.join(cfg.factors)} (bins {cfg.factor_bins}); held out "
        f"{len(cfg.hold_out)} combinations; {cfg.steps} training steps per model, "
        f"{cfg.num} samples per combination and method, {report['chain_steps']} Langevin "
        f"steps from noise (preset {cfg.preset}); seed {cfg.seed}{_classifier_seed(cfg)}. "
        f"Score: fraction of samples whose every factor the classifiers (trained on all the "
        f"data) read as requested; "
        f"chance {report['chance']:.3f}.",
        "",
        _classifier_line(report["classifiers"]),
        "",
        "| combinations | composed experts | joint model | test data (ceiling) |",
        "|---|---|---|---|",
    ]
    for kind in ("held_out", "seen"):
        lines.append(f"| {kind.replace('_', ' ')} | {_fmt(s[kind]['composed'])} | "
                     f"{_fmt(s[kind]['joint'])} | {_fmt(s[kind]['test data'])} |")
    lines += ["", "| combination | held out | composed | joint | test data |",
              "|---|---|---|---|---|"]
    for r in report["combinations"]:
        name = ", ".join(f"{f}={v}" for f, v in r["names"].items())
        lines.append(f"| {name} | {'yes' if r['held_out'] else ''} | "
                     f"{_fmt(r['composed']['all_right'])} | {_fmt(r['joint']['all_right'])} | "
                     f"{_fmt(r['test data']['all_right'])} |")
    lines += ["", "Wall time: " + ", ".join(f"{k} {v}" for k, v in report["timings"].items()),
              "", "Samples of the held-out combinations (one row each): held-out-composed.png, "
              "held-out-joint.png.", ""]
    return "\n".join(lines)
