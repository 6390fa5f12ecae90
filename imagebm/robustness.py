"""Adversarial robustness of the conditional EBM classifier (PAPER.md §3), with guards.

:func:`pgd` is untargeted projected gradient descent on the cross-entropy or the logit margin
(:func:`attack_loss`) of any module that maps images (N, C, H, W) in [0, 1] to logits, in an
L∞ or L2 ball; ``eot`` averages the input gradient over several forward passes, the expectation
over the Langevin noise of a refined :class:`~imagebm.classify.EnergyClassifier`, which is
attacked *through* its refinement chains.
:func:`square_attack` is a gradient-free random search in the same ball: if it beats PGD, the
gradients are misleading (gradient masking) and the PGD numbers are not to be trusted.

:func:`robustness_report` scores the softmax reference, the EBM (argmin energy) and the EBM with
refinement over a grid of ε, and checks itself: the attack must break the softmax classifier,
a stronger PGD must not lower the numbers further, input gradients through the refinement must
be finite and non-zero, and neither the gradient-free attack nor PGD examples made on the
unrefined models (transfer) may fool the refined EBM more than PGD through its refinement.
``imagebm robustness`` writes ``robustness.json``, ``robustness.png`` and ``run.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from imagebm.classify import load_classifier, predict, reference_for, refine_sampler, test_split
from imagebm.train import load_image_run
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import write_json, write_run_info

Norm = Literal["linf", "l2"]
NORMS = ("linf", "l2")
Loss = Literal["ce", "margin"]
LOSSES = ("ce", "margin")
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
_SQUARE_SCHEDULE = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)
"""Fractions of the query budget at which the square's area halves (Square attack's schedule)."""


def _check_attack(norm: str, eps: float) -> None:
    if norm not in NORMS:
        raise UsageError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not math.isfinite(eps) or eps < 0:
        raise UsageError(f"eps must be finite and >= 0, got {eps}")


def _flat_norm(t: Tensor) -> Tensor:
    """Per-example L2 norm, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(x: Tensor, x_adv: Tensor, norm: Norm, eps: float) -> Tensor:
    """``x_adv`` moved into the ε-ball around ``x`` and then into [0, 1] (stays in the ball)."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _random_start(x: Tensor, norm: Norm, eps: float, generator: torch.Generator) -> Tensor:
    """A uniform draw from the ε-ball around ``x`` (then clipped to [0, 1])."""
    if norm == "linf":
        delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=generator)
        radius = torch.rand((x.shape[0],), generator=generator) ** (1.0 / x[0].numel())
        delta = direction / _flat_norm(direction) * radius.view(-1, *([1] * (x.dim() - 1))) * eps
    return project(x, x + delta.to(x), norm, eps)


def _ascent_direction(grad: Tensor, norm: Norm) -> Tensor:
    """The steepest-ascent step of unit size for the norm: sign, or the normalised gradient."""
    if norm == "linf":
        return grad.sign()
    return grad / _flat_norm(grad).clamp_min(1e-12)


def attack_loss(logits: Tensor, y: Tensor, loss: Loss = "ce") -> Tensor:
    """Per-example loss the attacker raises: cross-entropy, or the margin ``max_{k≠y} z_k - z_y``
    (positive = misclassified), which ignores the logits' scale: a conditional EBM's logits
    ``-E`` differ by ~0.1, so its softmax is near uniform and the cross-entropy's gradient
    pushes towards the mean of the other classes rather than the nearest one."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    other = logits.scatter(1, y[:, None], float("-inf")).max(1).values
    return other - logits.gather(1, y[:, None]).squeeze(1)


def _loss_and_grad(model: nn.Module, x: Tensor, y: Tensor, eot: int, need_grad: bool,
                   loss_fn: Loss = "ce") -> tuple[Tensor, Tensor, Tensor | None]:
    """Loss and misclassification per example, and the input gradient of the loss, each
    averaged over ``eot`` forward passes (one backward per pass keeps one graph alive)."""
    x = x.detach().requires_grad_(need_grad)
    loss = torch.zeros(x.shape[0], device=x.device)
    logits = None
    grad = torch.zeros_like(x) if need_grad else None
    for _ in range(eot):
        with torch.set_grad_enabled(need_grad):
            out = model(x)
            value = attack_loss(out, y, loss_fn)
        if need_grad:
            grad += torch.autograd.grad(value.sum(), x)[0]
        loss += value.detach()
        logits = out.detach() if logits is None else logits + out.detach()
    wrong = logits.argmax(1) != y
    return loss / eot, wrong, None if grad is None else grad / eot


def pgd(model: nn.Module, x: Tensor, y: Tensor, *, norm: Norm, eps: float, steps: int = 20,
        step_size: float | None = None, restarts: int = 1, eot: int = 1, loss: Loss = "ce",
        generator: torch.Generator | None = None, seed: int = 0) -> Tensor:
    """Untargeted PGD on the cross-entropy (or margin, :func:`attack_loss`) of ``model(x)``;
    returns the adversarial images.

    Each restart starts uniformly inside the ε-ball and takes ``steps`` sign-gradient (L∞) or
    normalised-gradient (L2) steps of ``step_size`` (default 2.5 ε / steps), projecting onto the
    ball and [0, 1]. Per example the worst iterate over all steps and restarts is kept: a
    misclassified one before a correct one, then the higher loss; an iterate whose loss is below
    the clean input's never replaces it, so the returned loss is at least the clean loss (for a
    stochastic model, as measured in the attack's own forward passes). ``generator`` (or
    ``seed``) draws the random starts; a refined EBM's Langevin noise uses torch's global RNG.
    """
    _check_attack(norm, eps)
    if steps < 0 or restarts < 1 or eot < 1 or loss not in LOSSES:
        raise UsageError(f"need steps >= 0, restarts >= 1, eot >= 1, loss in {LOSSES}; got "
                         f"{steps}, {restarts}, {eot}, {loss!r}")
    x, y = x.detach(), y.to(x.device)
    if eps == 0:
        return x.clone()
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    alpha = step_size if step_size is not None else 2.5 * eps / max(steps, 1)
    clean_loss, best_wrong, _ = _loss_and_grad(model, x, y, eot, False, loss)
    best, best_loss = x.clone(), clean_loss.clone()
    for _ in range(restarts):
        x_adv = _random_start(x, norm, eps, gen)
        for i in range(steps + 1):
            value, wrong, grad = _loss_and_grad(model, x_adv, y, eot, i < steps, loss)
            better = (value >= clean_loss) & ((wrong & ~best_wrong)
                                              | ((wrong == best_wrong) & (value > best_loss)))
            best[better], best_loss[better] = x_adv[better], value[better]
            best_wrong = best_wrong | (better & wrong)
            if grad is not None:
                x_adv = project(x, x_adv + alpha * _ascent_direction(grad, norm), norm, eps)
    return best


def _margin(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Logit of the true class minus the largest other logit: below 0 means misclassified."""
    with torch.no_grad():
        return -attack_loss(model(x), y, "margin")


def square_attack(model: nn.Module, x: Tensor, y: Tensor, *, norm: Norm, eps: float,
                  queries: int = 300, p_init: float = 0.3,
                  generator: torch.Generator | None = None, seed: int = 0) -> Tensor:
    """Gradient-free random search in the ε-ball (Square attack style); the adversarial images.

    Minimises the margin (true logit minus best other) with one forward pass per query, so it
    cannot be misled by gradients. L∞ is Andriushchenko et al. (2020): vertical-stripe start, then
    a random square (area ``p`` of the image, halving on their schedule) set to ±ε per channel.
    L2 is a simplified variant: a random-sign square of norm ``min(1, 2 side / √(HW)) ε`` is
    added and the perturbation rescaled onto the ε-sphere. A proposal is kept only where it
    lowers an example's margin; examples already misclassified stop moving.
    """
    _check_attack(norm, eps)
    if queries < 0 or not 0 < p_init <= 1:
        raise UsageError(f"need queries >= 0 and 0 < p_init <= 1, got {queries}, {p_init}")
    x, y = x.detach(), y.to(x.device)
    if eps == 0:
        return x.clone()
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    n, c, h, w = x.shape
    if norm == "linf":
        stripes = torch.randint(0, 2, (n, c, 1, w), generator=gen).float() * 2 - 1
        delta = (stripes * eps).expand_as(x).to(x)
    else:
        direction = torch.randn(x.shape, generator=gen).to(x)
        delta = direction / _flat_norm(direction) * eps
    best = project(x, x + delta, norm, eps)
    margin = _margin(model, best, y)
    for q in range(queries):
        active = (margin >= 0).nonzero().squeeze(1)
        if len(active) == 0:
            break
        p = p_init * 0.5 ** sum(q >= f * queries for f in _SQUARE_SCHEDULE)
        side = max(1, min(h, w, round(math.sqrt(p * h * w))))
        xa, cur = x[active], best[active]
        delta = cur - xa
        rows = torch.randint(0, h - side + 1, (len(active),), generator=gen)
        cols = torch.randint(0, w - side + 1, (len(active),), generator=gen)
        signs = (torch.randint(0, 2, (len(active), c), generator=gen).float() * 2 - 1).to(x)
        window = torch.zeros(len(active), 1, h, w, device=x.device)
        for k, (r, s) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
            window[k, :, r:r + side, s:s + side] = 1.0
        patch = signs[:, :, None, None] * window
        if norm == "linf":
            delta = torch.where(window > 0, patch * eps, delta)
        else:
            step = min(1.0, 2 * side / math.sqrt(h * w)) * eps
            delta = delta + patch / _flat_norm(patch) * step
            delta = delta / _flat_norm(delta).clamp_min(1e-12) * eps
        proposal = project(xa, xa + delta, norm, eps)
        new = _margin(model, proposal, y[active])
        improved = new < margin[active]
        best[active[improved]] = proposal[improved]
        margin[active[improved]] = new[improved]
    return best


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def adversarial_examples(model: nn.Module, x: Tensor, y: Tensor, *, norm: Norm, eps: float,
                         attack: Literal["pgd", "square"] = "pgd", batch_size: int = 100,
                         seed: int = 0, **attack_kw: Any) -> Tensor:
    """``attack`` (PGD or the square attack) on ``x`` in batches; the images, on CPU."""
    device = next(model.parameters()).device
    fn = pgd if attack == "pgd" else square_attack
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([fn(model, x[b].to(device), y[b].to(device), norm=norm, eps=eps,
                         generator=gen, **attack_kw).cpu() for b in _batches(len(x), batch_size)])


def correct(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 100) -> Tensor:
    """Per example (bool, on CPU): classified right by a fresh forward pass of ``model`` (fresh
    Langevin noise for a refined EBM)."""
    return predict(model, x, batch_size).argmax(1) == y


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, norm: Norm, eps: float,
                    attack: Literal["pgd", "square"] = "pgd", batch_size: int = 100,
                    seed: int = 0, **attack_kw: Any) -> float:
    """Accuracy of ``model`` on ``x`` after ``attack`` (PGD or the square attack) within ε."""
    adv = adversarial_examples(model, x, y, norm=norm, eps=eps, attack=attack,
                               batch_size=batch_size, seed=seed, **attack_kw)
    return float(correct(model, adv, y, batch_size).float().mean())


def input_gradient_norms(model: nn.Module, x: Tensor, y: Tensor, loss: Loss = "ce") -> Tensor:
    """Per-example L2 norm of the attack loss's gradient with respect to the input."""
    device = next(model.parameters()).device
    _, _, grad = _loss_and_grad(model, x.to(device), y.to(device), 1, True, loss)
    return grad.flatten(1).norm(dim=1).cpu()


def _gradient_flow(classifiers: dict[str, nn.Module], x: Tensor, y: Tensor, loss: Loss
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


def robustness_report(run_dir: str | os.PathLike, norm: Norm, eps: Sequence[float], *,
                      num: int = 200, langevin_steps: int = 10, samples: int = 1,
                      step_size: float | None = None, steps: int = 20, restarts: int = 1,
                      eot: int = 1, loss: Loss = "margin", queries: int = 300,
                      batch_size: int = 100, seed: int = 0,
                      reference: str | os.PathLike | None = None,
                      data_root: str | os.PathLike | None = None, device: str = "cpu",
                      progress: bool = True) -> dict[str, Any]:
    """Accuracy per ε of the softmax reference, the EBM and the refined EBM under PGD, + guards.

    Scores the first ``num`` test images. ``step_size`` is the refinement's Langevin step
    (default :data:`imagebm.classify.REFINE_STEP_SIZE`); ``eot`` applies to the refined EBM only
    (the others are deterministic). ``loss`` is PGD's loss for every model: the margin by
    default, as the cross-entropy is weak on an EBM's small logits (:func:`attack_loss`).
    Transfer runs at every ε; the convergence and gradient-free guards at the ε where the
    refined EBM leads the softmax classifier most; failed guards are listed under ``warnings``.
    ``target`` judges the refined EBM by its worst case over direct PGD and transfer. Seeds
    torch's global RNG (the Langevin noise) before each attack.
    """
    eps = [float(e) for e in eps]
    check_settings(norm, eps, num=num, langevin_steps=langevin_steps, samples=samples,
                   steps=steps, restarts=restarts, eot=eot, queries=queries, loss=loss)
    device = resolve_device(device)
    run = load_image_run(run_dir, device)
    if not run.config.conditional:
        raise UsageError(f"{run.path} is unconditional; robustness needs a class-conditional run")
    t0 = time.perf_counter()
    data = test_split(run.config, data_root)
    x, y = data.float()[:num], data.labels[:num]
    classifiers = {"softmax": reference_for(run, reference, data_root, device, progress),
                   "ebm": load_classifier(run, 0, device=device),
                   "ebm_refined": load_classifier(run, langevin_steps, samples, device,
                                                  step_size)}
    for classifier in classifiers.values():  # attacks need input gradients only
        classifier.eval().requires_grad_(False)

    def attacked(key: str, e: float, scale: int = 1, kind: str = "pgd") -> Tensor:
        torch.manual_seed(seed)
        if kind == "square":
            return adversarial_examples(classifiers[key], x, y, norm=norm, eps=e,
                                        attack="square", queries=queries, seed=seed,
                                        batch_size=batch_size)
        return adversarial_examples(classifiers[key], x, y, norm=norm, eps=e, seed=seed,
                                    steps=steps * scale, restarts=restarts * scale,
                                    eot=eot if key == "ebm_refined" else 1, loss=loss,
                                    batch_size=batch_size)

    def scored(key: str, images: Tensor) -> Tensor:
        torch.manual_seed(seed + 1)
        return correct(classifiers[key], images, y, batch_size)

    accuracy: dict[str, list[float]] = {k: [] for k in MODELS}
    right: dict[tuple[str, float], Tensor] = {}
    adv: dict[tuple[str, float], Tensor] = {}
    bar = tqdm(total=len(eps) * len(MODELS), desc=f"robustness {norm}", disable=not progress)
    for e in eps:
        for key in MODELS:
            bar.set_postfix_str(f"{key} eps={e:g}")
            adv[key, e] = attacked(key, e)
            right[key, e] = scored(key, adv[key, e])
            accuracy[key].append(float(right[key, e].float().mean()))
            bar.update()
    bar.close()

    warnings: list[str] = []
    guards: dict[str, Any] = {}
    top = max(eps)
    if top > 0:
        acc = accuracy["softmax"][eps.index(top)]
        guards["softmax_broken"] = {"eps": top, "accuracy": acc, "ok": acc <= SOFTMAX_BROKEN}
        if acc > SOFTMAX_BROKEN:
            warnings.append(f"PGD leaves the softmax classifier at {acc:.1%} at eps={top:g}: "
                            f"the attack is too weak (raise --steps or eps)")
    moved = {src: [scored("ebm_refined", adv[src, e]) for e in eps] for src in ("softmax", "ebm")}
    transfer = {src: [float(c.float().mean()) for c in cs] for src, cs in moved.items()}
    worst = [float((right["ebm_refined", e] & moved["softmax"][i] & moved["ebm"][i])
                   .float().mean()) for i, e in enumerate(eps)]
    beaten = [e for i, e in enumerate(eps)
              if min(t[i] for t in transfer.values()) < accuracy["ebm_refined"][i] - MASKING_MARGIN]
    guards["transfer"] = {"from": transfer, "worst_accuracy": worst, "ok": not beaten}
    if beaten:
        warnings.append(f"PGD examples of the unrefined models fool the refined EBM more than "
                        f"attacking it directly at eps={', '.join(f'{e:g}' for e in beaten)}: "
                        f"possible gradient masking")
    at = _guard_eps(eps, accuracy)
    if at is not None:
        strong = {}
        for key in tqdm(MODELS, desc="convergence check", disable=not progress):
            base = accuracy[key][eps.index(at)]
            stronger = float(scored(key, attacked(key, at, scale=2)).float().mean())
            strong[key] = {"accuracy": base, "stronger": stronger, "drop": base - stronger}
        drop = max(v["drop"] for v in strong.values())
        guards["convergence"] = {"eps": at, "steps": 2 * steps, "restarts": 2 * restarts,
                                 "models": strong, "ok": drop <= CONVERGENCE_DROP}
        if drop > CONVERGENCE_DROP:
            warnings.append(f"2x steps and restarts lower accuracy by up to {drop:.1%} at "
                            f"eps={at:g}: PGD has not converged, numbers are optimistic")
        free: dict[str, Any] = {}
        for key in tqdm(("ebm", "ebm_refined"), desc="gradient-free attack",
                        disable=not progress):
            square = scored(key, attacked(key, at, kind="square"))
            pgd_ok = right[key, at]
            free[key] = {"accuracy": float(square.float().mean()),
                         "pgd_accuracy": float(pgd_ok.float().mean()),
                         "combined_accuracy": float((square & pgd_ok).float().mean())}
        masked = [k for k, v in free.items()
                  if v["accuracy"] < v["pgd_accuracy"] - MASKING_MARGIN]
        guards["gradient_free"] = {"attack": "square", "eps": at, "queries": queries,
                                   "models": free, "ok": not masked}
        for key in masked:
            warnings.append(f"the gradient-free attack beats PGD on {MODELS[key]} at eps={at:g} "
                            f"({free[key]['accuracy']:.1%} < {free[key]['pgd_accuracy']:.1%}): "
                            f"possible gradient masking")
    torch.manual_seed(seed)
    flow = _gradient_flow(classifiers, x[:32], y[:32], loss)
    guards["gradient_flow"] = flow
    if not flow["ok"]:
        warnings.append("input gradients through the refinement are zero or not finite")
    return {"run": str(run.path), "dataset": data.name, "norm": norm, "eps": eps,
            "test_images": len(x), "models": MODELS, "accuracy": accuracy,
            "settings": {"steps": steps, "restarts": restarts, "eot": eot, "loss": loss,
                         "pgd_step_size": "2.5 eps / steps", "queries": queries,
                         "langevin_steps": langevin_steps, "samples": samples, "seed": seed,
                         "refine_sampler": asdict(refine_sampler(run.config, langevin_steps,
                                                                 step_size))},
            "guards": guards, "warnings": warnings,
            "target": _target(eps, {**accuracy, "ebm_refined": worst}),
            "seconds": round(time.perf_counter() - t0, 1)}


def check_settings(norm: str, eps: Sequence[float], *, num: int, langevin_steps: int,
                   samples: int, steps: int, restarts: int, eot: int, queries: int,
                   loss: str = "margin") -> None:
    """UsageError for any bad setting of a report (before anything is loaded or written)."""
    if not eps:
        raise UsageError("give at least one eps")
    for e in eps:
        _check_attack(norm, float(e))
    if loss not in LOSSES:
        raise UsageError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if num < 1 or langevin_steps < 0 or samples < 1 or steps < 1 or restarts < 1 or eot < 1 \
            or queries < 0:
        raise UsageError("need num, samples, steps, restarts, eot >= 1 and langevin_steps, "
                         "queries >= 0")


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def run_robustness(args: argparse.Namespace) -> int:
    report = robustness_report(
        args.run, args.norm, args.eps, num=args.num, langevin_steps=args.langevin_steps,
        samples=args.samples, step_size=args.refine_step_size, steps=args.steps,
        restarts=args.restarts, eot=args.eot, loss=args.loss, queries=args.queries,
        seed=args.seed, reference=args.reference, data_root=args.data_root, device=args.device,
        progress=not args.quiet)
    print(report_table(report))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reports = {n: r for n, r in _read_reports(out / "robustness.json").items()
               if r.get("run") == report["run"]}
    reports[args.norm] = report
    write_json(out / "robustness.json", reports)
    plot_robustness(reports, out / "robustness.png")
    write_run_info(out, {k: v for k, v in vars(args).items() if k != "func"}, args.seed)
    print(f"wrote {out / 'robustness.json'} and {out / 'robustness.png'}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``imagebm robustness``."""
    p = subparsers.add_parser("robustness", help="accuracy under PGD (L-inf or L2) of a "
                              "conditional EBM, with and without Langevin refinement, beside a "
                              "softmax classifier; with checks against a weak attack")
    p.add_argument("--run", required=True, help="conditional run folder from `imagebm train`")
    p.add_argument("--norm", required=True, help="linf | l2")
    p.add_argument("--eps", type=float, nargs="+", required=True, help="attack radii")
    p.add_argument("--out", required=True, help="folder for robustness.json, .png, run.json")
    p.add_argument("--num", type=int, default=200, help="test images scored")
    p.add_argument("--langevin-steps", type=int, default=10, help="refinement steps")
    p.add_argument("--samples", type=int, default=1, help="refinement chains averaged")
    p.add_argument("--refine-step-size", type=float, default=None,
                   help="refinement Langevin step (default imagebm.classify.REFINE_STEP_SIZE)")
    p.add_argument("--steps", type=int, default=20, help="PGD steps")
    p.add_argument("--restarts", type=int, default=1, help="PGD random restarts")
    p.add_argument("--eot", type=int, default=1,
                   help="forward passes averaged per PGD gradient of the refined EBM")
    p.add_argument("--loss", default="margin",
                   help="PGD loss: margin (default; strong on an EBM's small logits) | ce")
    p.add_argument("--queries", type=int, default=300, help="gradient-free attack's queries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", default=None,
                   help="softmax reference folder (default RUN/softmax, trained if absent)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_robustness)
