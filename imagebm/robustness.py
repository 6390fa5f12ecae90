"""Adversarial robustness of the conditional EBM classifier (docs/paper.md §3), with guards.

:func:`robustness_report` attacks the softmax reference, the EBM (argmin energy) and the EBM
with Langevin refinement over a grid of ε (:mod:`imagebm.attacks`: PGD through the refinement,
the gradient-free square attack) and checks itself: the attack must break the softmax
classifier, a stronger PGD must not lower the numbers further, input gradients through the
refinement must be finite and non-zero, and neither the gradient-free attack nor PGD examples
made on the unrefined models (transfer) may fool the refined EBM more than PGD through its
refinement. ``imagebm robustness`` (:func:`robustness_to_folder`) writes ``robustness.json``,
``robustness.png`` and ``run.json``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from imagebm.attacks import (
    LOSSES,
    NORMS,
    Attack,
    adversarial_examples,
    check_attack,
    correct,
    input_gradient_norms,
)
from imagebm.classify import load_classifier, reference_for, refine_sampler, test_split
from imagebm.train import load_image_run
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.plotting import pyplot
from trajebm.engine.runinfo import write_json, write_run_info

MODELS = {"softmax": "softmax reference", "ebm": "EBM, argmin energy",
          "ebm_refined": "EBM, refined by Langevin"}
"""The three classifiers of a report, by key, with their labels in tables and plots."""
SOFTMAX_BROKEN = 0.05
"""The softmax classifier's accuracy at the largest ε must be at most this (guard 1)."""
CONVERGENCE_DROP = 0.02
"""A stronger PGD (2× steps, 2× restarts) lowering accuracy by more than this is a warning."""
MASKING_MARGIN = 0.01
"""The gradient-free or a transfer attack beating PGD by more than this flags possible gradient
masking."""


@dataclass
class RobustnessConfig:
    """One robustness report: the attack, its budget, the refinement and the images scored."""

    norm: str
    """linf | l2"""
    eps: tuple[float, ...]
    """Attack radii."""
    num: int = 200
    """Test images scored (the first ones)."""
    langevin_steps: int = 10
    """Refinement steps."""
    samples: int = 1
    """Refinement chains averaged."""
    refine_step_size: float | None = None
    """Refinement Langevin step (default imagebm.classify.REFINE_STEP_SIZE)."""
    pgd_steps: int = 20
    """PGD steps."""
    restarts: int = 1
    """PGD random restarts."""
    eot: int = 1
    """Forward passes averaged per PGD gradient of the refined EBM (the others are
    deterministic)."""
    loss: str = "margin"
    """PGD loss: margin (strong on an EBM's small logits) | ce."""
    queries: int = 300
    """Gradient-free attack's queries."""
    batch_size: int = 100
    """Images attacked at once."""
    seed: int = 0
    """Seeds the attacks' starts and torch's global RNG (the Langevin noise) before each."""

    def __post_init__(self) -> None:
        self.eps = tuple(float(e) for e in self.eps)
        if not self.eps:
            raise UsageError("give at least one eps")
        for e in self.eps:
            check_attack(self.norm, e)
        if self.loss not in LOSSES:
            raise UsageError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if min(self.num, self.samples, self.pgd_steps, self.restarts, self.eot,
               self.batch_size) < 1 or self.langevin_steps < 0 or self.queries < 0:
            raise UsageError("need num, samples, steps, restarts, eot >= 1 and langevin_steps, "
                             "queries >= 0")


def _gradient_flow(classifiers: dict[str, nn.Module], x: Tensor, y: Tensor, loss: str
                   ) -> dict[str, Any]:
    """Guard 3: input gradients through the refinement are finite and non-zero."""
    out: dict[str, Any] = {"images": len(x), "loss": loss}
    for key in ("ebm", "ebm_refined"):
        norms = input_gradient_norms(classifiers[key], x, y, loss)
        out[key] = {"mean_norm": float(norms.mean()), "min_norm": float(norms.min()),
                    "finite": bool(torch.isfinite(norms).all()),
                    "nonzero_fraction": float((norms > 0).float().mean())}
    refined = out["ebm_refined"]
    out["ok"] = refined["finite"] and refined["nonzero_fraction"] == 1.0
    return out


def _guard_eps(eps: list[float], accuracy: dict[str, list[float]]) -> float | None:
    """The ε > 0 where the refined EBM leads the softmax classifier most (ties: the larger ε)."""
    gaps = [(accuracy["ebm_refined"][i] - accuracy["softmax"][i], e)
            for i, e in enumerate(eps) if e > 0]
    return max(gaps)[1] if gaps else None


def _target(eps: list[float], accuracy: dict[str, list[float]]) -> dict[str, Any]:
    """The target: refined EBM above softmax at every ε from the first where softmax < 50%;
    ``short_at`` lists the ε where it is not (often where both are at 0)."""
    below = [e for e, a in zip(eps, accuracy["softmax"], strict=True) if a < 0.5]
    if not below:
        return {"eps_softmax_below_half": None, "met": None, "short_at": []}
    start = min(below)
    short = [e for e, r, s in zip(eps, accuracy["ebm_refined"], accuracy["softmax"], strict=True)
             if e >= start and not r > s]
    return {"eps_softmax_below_half": start, "met": not short, "short_at": short}


class _Bench:
    """The three classifiers on the scored images: attacks and fresh scores, each seeded."""

    def __init__(self, classifiers: dict[str, nn.Module], x: Tensor, y: Tensor,
                 cfg: RobustnessConfig) -> None:
        self.classifiers, self.x, self.y, self.cfg = classifiers, x, y, cfg

    def attacked(self, key: str, e: float, scale: int = 1, kind: Attack = "pgd") -> Tensor:
        """Adversarial images of model ``key`` at ε = ``e`` (PGD ``scale`` times stronger)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        common = {"norm": cfg.norm, "eps": e, "seed": cfg.seed, "batch_size": cfg.batch_size}
        if kind == "square":
            return adversarial_examples(self.classifiers[key], self.x, self.y, attack="square",
                                        queries=cfg.queries, **common)
        return adversarial_examples(self.classifiers[key], self.x, self.y,
                                    steps=cfg.pgd_steps * scale, restarts=cfg.restarts * scale,
                                    eot=cfg.eot if key == "ebm_refined" else 1, loss=cfg.loss,
                                    **common)

    def scored(self, key: str, images: Tensor) -> Tensor:
        """Per image: model ``key`` classifies it right (fresh Langevin noise, seeded)."""
        torch.manual_seed(self.cfg.seed + 1)
        return correct(self.classifiers[key], images, self.y, self.cfg.batch_size)


def _load_bench(run_dir: str | os.PathLike, cfg: RobustnessConfig,
                reference: str | os.PathLike | None, data_root: str | os.PathLike | None,
                device: torch.device, progress: bool) -> tuple[_Bench, Any, str]:
    """The run, its classifiers (gradients for the inputs only) and the first test images."""
    run = load_image_run(run_dir, device)
    if not run.config.conditional:
        raise UsageError(f"{run.path} is unconditional; robustness needs a class-conditional run")
    data = test_split(run.config, data_root)
    x, y = data.float()[:cfg.num], data.labels[:cfg.num]
    classifiers = {"softmax": reference_for(run, reference, data_root, device, progress),
                   "ebm": load_classifier(run, 0, device=device),
                   "ebm_refined": load_classifier(run, cfg.langevin_steps, cfg.samples, device,
                                                  cfg.refine_step_size)}
    for classifier in classifiers.values():  # attacks need input gradients only
        classifier.eval().requires_grad_(False)
    return _Bench(classifiers, x, y, cfg), run, data.name


def _accuracy_grid(bench: _Bench, progress: bool
                   ) -> tuple[dict[str, list[float]], dict[tuple[str, float], Tensor],
                              dict[tuple[str, float], Tensor]]:
    """Accuracy per model and ε under PGD, and per (model, ε) who is right and the images."""
    eps = bench.cfg.eps
    accuracy: dict[str, list[float]] = {k: [] for k in MODELS}
    right: dict[tuple[str, float], Tensor] = {}
    adv: dict[tuple[str, float], Tensor] = {}
    bar = tqdm(total=len(eps) * len(MODELS), desc=f"robustness {bench.cfg.norm}",
               disable=not progress)
    for e in eps:
        for key in MODELS:
            bar.set_postfix_str(f"{key} eps={e:g}")
            adv[key, e] = bench.attacked(key, e)
            right[key, e] = bench.scored(key, adv[key, e])
            accuracy[key].append(float(right[key, e].float().mean()))
            bar.update()
    bar.close()
    return accuracy, right, adv


def _transfer_guard(bench: _Bench, accuracy: dict[str, list[float]],
                    right: dict[tuple[str, float], Tensor],
                    adv: dict[tuple[str, float], Tensor], warnings: list[str]
                    ) -> dict[str, Any]:
    """PGD examples of the unrefined models against the refined EBM, and its worst case."""
    eps = bench.cfg.eps
    moved = {src: [bench.scored("ebm_refined", adv[src, e]) for e in eps]
             for src in ("softmax", "ebm")}
    transfer = {src: [float(c.float().mean()) for c in cs] for src, cs in moved.items()}
    worst = [float((right["ebm_refined", e] & moved["softmax"][i] & moved["ebm"][i])
                   .float().mean()) for i, e in enumerate(eps)]
    beaten = [e for i, e in enumerate(eps)
              if min(t[i] for t in transfer.values()) < accuracy["ebm_refined"][i] - MASKING_MARGIN]
    if beaten:
        warnings.append(f"PGD examples of the unrefined models fool the refined EBM more than "
                        f"attacking it directly at eps={', '.join(f'{e:g}' for e in beaten)}: "
                        f"possible gradient masking")
    return {"from": transfer, "worst_accuracy": worst, "ok": not beaten}


def _convergence_guard(bench: _Bench, at: float, accuracy: dict[str, list[float]],
                       progress: bool, warnings: list[str]) -> dict[str, Any]:
    """Accuracy at ε = ``at`` under PGD with twice the steps and restarts."""
    cfg, strong = bench.cfg, {}
    for key in tqdm(MODELS, desc="convergence check", disable=not progress):
        base = accuracy[key][cfg.eps.index(at)]
        stronger = float(bench.scored(key, bench.attacked(key, at, scale=2)).float().mean())
        strong[key] = {"accuracy": base, "stronger": stronger, "drop": base - stronger}
    drop = max(v["drop"] for v in strong.values())
    if drop > CONVERGENCE_DROP:
        warnings.append(f"2x steps and restarts lower accuracy by up to {drop:.1%} at "
                        f"eps={at:g}: PGD has not converged, numbers are optimistic")
    return {"eps": at, "steps": 2 * cfg.pgd_steps, "restarts": 2 * cfg.restarts,
            "models": strong, "ok": drop <= CONVERGENCE_DROP}


def _gradient_free_guard(bench: _Bench, at: float, right: dict[tuple[str, float], Tensor],
                         progress: bool, warnings: list[str]) -> dict[str, Any]:
    """The square attack at ε = ``at`` against both EBMs, beside PGD."""
    free: dict[str, Any] = {}
    for key in tqdm(("ebm", "ebm_refined"), desc="gradient-free attack", disable=not progress):
        square = bench.scored(key, bench.attacked(key, at, kind="square"))
        pgd_ok = right[key, at]
        free[key] = {"accuracy": float(square.float().mean()),
                     "pgd_accuracy": float(pgd_ok.float().mean()),
                     "combined_accuracy": float((square & pgd_ok).float().mean())}
    masked = [k for k, v in free.items() if v["accuracy"] < v["pgd_accuracy"] - MASKING_MARGIN]
    for key in masked:
        warnings.append(f"the gradient-free attack beats PGD on {MODELS[key]} at eps={at:g} "
                        f"({free[key]['accuracy']:.1%} < {free[key]['pgd_accuracy']:.1%}): "
                        f"possible gradient masking")
    return {"attack": "square", "eps": at, "queries": bench.cfg.queries, "models": free,
            "ok": not masked}


def _softmax_guard(eps: tuple[float, ...], accuracy: dict[str, list[float]],
                   warnings: list[str]) -> dict[str, Any]:
    """The softmax classifier must be broken at the largest ε."""
    top = max(eps)
    acc = accuracy["softmax"][eps.index(top)]
    if acc > SOFTMAX_BROKEN:
        warnings.append(f"PGD leaves the softmax classifier at {acc:.1%} at eps={top:g}: "
                        f"the attack is too weak (raise --steps or eps)")
    return {"eps": top, "accuracy": acc, "ok": acc <= SOFTMAX_BROKEN}


def robustness_report(run_dir: str | os.PathLike, config: RobustnessConfig, *,
                      reference: str | os.PathLike | None = None,
                      data_root: str | os.PathLike | None = None, device: str = "cpu",
                      progress: bool = True) -> dict[str, Any]:
    """Accuracy per ε of the softmax reference, the EBM and the refined EBM under PGD, + guards.

    ``loss`` is PGD's loss for every model: the margin by default, as the cross-entropy is weak
    on an EBM's small logits (:func:`~imagebm.attacks.attack_loss`). Transfer runs at every ε;
    the convergence and gradient-free guards at the ε where the refined EBM leads the softmax
    classifier most; failed guards are listed under ``warnings``. ``target`` judges the refined
    EBM by its worst case over direct PGD and transfer.
    """
    cfg, eps = config, list(config.eps)
    t0 = time.perf_counter()
    bench, run, dataset = _load_bench(run_dir, cfg, reference, data_root,
                                      resolve_device(device), progress)
    accuracy, right, adv = _accuracy_grid(bench, progress)
    warnings: list[str] = []
    guards: dict[str, Any] = {}
    if max(eps) > 0:
        guards["softmax_broken"] = _softmax_guard(cfg.eps, accuracy, warnings)
    guards["transfer"] = _transfer_guard(bench, accuracy, right, adv, warnings)
    at = _guard_eps(eps, accuracy)
    if at is not None:
        guards["convergence"] = _convergence_guard(bench, at, accuracy, progress, warnings)
        guards["gradient_free"] = _gradient_free_guard(bench, at, right, progress, warnings)
    torch.manual_seed(cfg.seed)
    guards["gradient_flow"] = flow = _gradient_flow(bench.classifiers, bench.x[:32],
                                                    bench.y[:32], cfg.loss)
    if not flow["ok"]:
        warnings.append("input gradients through the refinement are zero or not finite")
    sampler = refine_sampler(run.config, cfg.langevin_steps, cfg.refine_step_size)
    worst = guards["transfer"]["worst_accuracy"]
    return {"run": str(run.path), "dataset": dataset, "norm": cfg.norm, "eps": eps,
            "test_images": len(bench.x), "models": MODELS, "accuracy": accuracy,
            "settings": {"steps": cfg.pgd_steps, "restarts": cfg.restarts, "eot": cfg.eot,
                         "loss": cfg.loss, "pgd_step_size": "2.5 eps / steps",
                         "queries": cfg.queries, "langevin_steps": cfg.langevin_steps,
                         "samples": cfg.samples, "seed": cfg.seed,
                         "refine_sampler": asdict(sampler)},
            "guards": guards, "warnings": warnings,
            "target": _target(eps, {**accuracy, "ebm_refined": worst}),
            "seconds": round(time.perf_counter() - t0, 1)}


def report_table(report: dict[str, Any]) -> str:
    """The report as plain text: accuracy per ε and model, then the guards and warnings."""
    eps = report["eps"]
    cfg = report["settings"]
    lines = [f"{report['dataset']}, {report['test_images']} test images, PGD {report['norm']} on "
             f"the {cfg['loss']} loss, {cfg['steps']} steps x {cfg['restarts']} restarts, "
             f"eot {cfg['eot']}; refinement {cfg['langevin_steps']} Langevin steps of "
             f"{cfg['refine_sampler']['step_size']:g}",
             f"{'eps':>28} " + " ".join(f"{e:>6g}" for e in eps)]
    for key, label in report["models"].items():
        lines.append(f"{label:>28} " + " ".join(f"{a:6.3f}" for a in report["accuracy"][key]))
    guards = report["guards"]
    g = guards["transfer"]
    for label, row in (("refined, PGD from softmax", g["from"]["softmax"]),
                       ("refined, PGD from EBM", g["from"]["ebm"]),
                       ("refined, worst of the three", g["worst_accuracy"])):
        lines.append(f"{label:>28} " + " ".join(f"{a:6.3f}" for a in row))
    lines.append(f"guard: transfer ({'ok' if g['ok'] else 'POSSIBLE MASKING'})")
    if "softmax_broken" in guards:
        g = guards["softmax_broken"]
        lines.append(f"guard: softmax at eps={g['eps']:g}: {g['accuracy']:.3f} "
                     f"({'ok' if g['ok'] else 'NOT broken'})")
    if "convergence" in guards:
        g = guards["convergence"]
        cells = ", ".join(f"{k} {v['accuracy']:.3f}->{v['stronger']:.3f}"
                          for k, v in g["models"].items())
        lines.append(f"guard: 2x steps/restarts at eps={g['eps']:g}: {cells} "
                     f"({'ok' if g['ok'] else 'NOT converged'})")
    if "gradient_free" in guards:
        g = guards["gradient_free"]
        cells = ", ".join(f"{k} {v['accuracy']:.3f} (PGD {v['pgd_accuracy']:.3f}, either "
                          f"{v['combined_accuracy']:.3f})" for k, v in g["models"].items())
        lines.append(f"guard: square attack, {g['queries']} queries, at eps={g['eps']:g}: "
                     f"{cells} ({'ok' if g['ok'] else 'POSSIBLE MASKING'})")
    g = guards["gradient_flow"]
    lines.append(f"guard: input-gradient norm over {g['images']} images: refined "
                 f"{g['ebm_refined']['mean_norm']:.3g} (min {g['ebm_refined']['min_norm']:.3g}),"
                 f" plain {g['ebm']['mean_norm']:.3g} ({'ok' if g['ok'] else 'ZERO/NON-FINITE'})")
    target = report["target"]
    if target["met"] is not None:
        lines.append(f"target (refined EBM, worst case, above softmax for eps >= "
                     f"{target['eps_softmax_below_half']:g}): "
                     + ("met" if target["met"] else
                        f"not met at eps={', '.join(f'{e:g}' for e in target['short_at'])}"))
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def plot_robustness(reports: dict[str, dict[str, Any]], path: str | os.PathLike) -> None:
    """Accuracy against ε, one curve per model, one panel per norm in ``reports``."""
    plt = pyplot()
    norms = [n for n in NORMS if n in reports]
    fig, axes = plt.subplots(1, len(norms), figsize=(5 * len(norms), 4), squeeze=False)
    for ax, norm in zip(axes[0], norms, strict=True):
        rep = reports[norm]
        for key, label in rep["models"].items():
            ax.plot(rep["eps"], rep["accuracy"][key], "o-", label=label)
        ax.plot(rep["eps"], rep["guards"]["transfer"]["worst_accuracy"], "k:",
                label="refined, worst of PGD and transfer")
        ax.set(xlabel=f"ε ({'L∞' if norm == 'linf' else 'L2'})", ylabel="accuracy under PGD",
               ylim=(-0.02, 1.02), title=f"{rep['dataset']}, {rep['test_images']} test images, "
                                         f"PGD on the {rep['settings']['loss']} loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _read_reports(path: Path) -> dict[str, dict[str, Any]]:
    """Reports already in ``robustness.json`` (per norm), or none if absent or unreadable."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {n: r for n, r in old.items() if n in NORMS and isinstance(r, dict)} \
        if isinstance(old, dict) else {}


def robustness_to_folder(run_dir: str | os.PathLike, out_dir: str | os.PathLike,
                         config: RobustnessConfig, *,
                         reference: str | os.PathLike | None = None,
                         data_root: str | os.PathLike | None = None, device: str = "cpu",
                         progress: bool = True) -> dict[str, Any]:
    """:func:`robustness_report` added to ``out_dir/robustness.json`` (one report per norm; a
    report of the other norm for the same run is kept) with ``robustness.png`` and
    ``run.json``; returns the report."""
    report = robustness_report(run_dir, config, reference=reference, data_root=data_root,
                               device=device, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reports = {n: r for n, r in _read_reports(out / "robustness.json").items()
               if r.get("run") == report["run"]}
    reports[config.norm] = report
    write_json(out / "robustness.json", reports)
    plot_robustness(reports, out / "robustness.png")
    write_run_info(out, config, config.seed, run=str(run_dir), reference=reference,
                   data_root=data_root, device=device)
    return report
