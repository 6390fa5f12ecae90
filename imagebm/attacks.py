"""Adversarial attacks on any image classifier (a module mapping images in [0, 1] to logits).

:func:`pgd` is untargeted projected gradient descent on the cross-entropy or the logit margin
(:func:`attack_loss`), in an L∞ or L2 ball; ``eot`` averages the input gradient over several
forward passes, the expectation over the Langevin noise of a refined
:class:`~imagebm.classify.EnergyClassifier`, which is attacked *through* its refinement chains.
:func:`square_attack` is a gradient-free random search in the same ball: if it beats PGD, the
gradients are misleading (gradient masking) and the PGD numbers are not to be trusted.
:mod:`imagebm.robustness` runs them on a trained run, with guards.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imagebm.classify import predict
from trajebm.engine.errors import UsageError

Norm = Literal["linf", "l2"]
NORMS = ("linf", "l2")
Loss = Literal["ce", "margin"]
LOSSES = ("ce", "margin")
Attack = Literal["pgd", "square"]
_SQUARE_SCHEDULE = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)
"""Fractions of the query budget at which the square's area halves (Square attack's schedule)."""


def check_attack(norm: str, eps: float) -> None:
    """UsageError unless ``norm`` is one of :data:`NORMS` and ``eps`` finite and >= 0."""
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
    check_attack(norm, eps)
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
    check_attack(norm, eps)
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
                         attack: Attack = "pgd", batch_size: int = 100,
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
                    attack: Attack = "pgd", batch_size: int = 100,
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
