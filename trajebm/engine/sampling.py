"""MCMC samplers for energy-based models: Langevin dynamics and Hamiltonian Monte Carlo.

An energy is any callable ``E(x, cond) -> (B,)`` (a model, a lambda, ...). Passing a sequence
of energies samples their sum, i.e. the product of the experts' densities. A bare energy in the
sequence gets the chain's one ``cond``; an :class:`Expert` carries its own condition (and a
weight), so experts conditioned differently compose directly:
``langevin([Expert(e_shape, circle), Expert(e_pos, left)], x)`` samples
``exp(-E_shape(x | circle) - E_pos(x | left))``. An :class:`Expert` is itself an energy.

Two Langevin conventions are offered (docs/paper.md §1):

* ``"paper"`` (the released code of Du & Mordatch): ``x <- x + sigma*eps``, then
  ``x <- x - lambda * clip(grad E(x))``. Step size and noise are decoupled.
* ``"textbook"``: ``x <- x - (eta/2) grad E(x) + sqrt(eta) * eps``, which samples
  ``exp(-E)`` as ``eta -> 0``. Its noise is fixed by ``eta``, so ``noise`` must stay at its
  default there (a ValueError otherwise).

A paper-convention chain with step ``lambda`` and noise ``sigma`` is the textbook chain with
``eta = 2*lambda`` at temperature ``sigma**2 / (2*lambda)``; see :func:`paper_to_textbook`.

``temperature`` T multiplies the noise by ``sqrt(T)`` and leaves the drift (and its clip)
alone, so a chain that targets ``exp(-E / T0)`` targets ``exp(-E / (T * T0))`` instead, in both
conventions, and T still acts when the gradient clip saturates.

Annealing: with ``step_size_end`` the step decays polynomially along the chain,
``s_i = (s_0 - s_end) * (1 - i / (steps - 1)) ** anneal_power + s_end`` (:func:`step_sizes`);
the paper convention's noise scales with ``sqrt(s_i / s_0)`` so the temperature stays constant.

Compilation (``LangevinConfig.compile``): each step — noise, energy gradient, clip, update,
bounds — runs as one ``torch.compile``'d function (``torch.func.grad`` inside, fixed shapes),
which removes most of the per-step Python and autograd overhead of small energies; the mode
``"reduce-overhead"`` also replays the step as a CUDA graph on a GPU. The noise is drawn
outside the compiled function from the same generator in the same order, so a compiled chain
follows the eager one (the reference and the default) to float rounding. The first call per
energy and shape pays the compilation (seconds); later chains reuse it. Experts' own
conditions reach the compiled step as inputs, so new conditions of the same shapes reuse it too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

EnergyFn = Callable[[Tensor, "Tensor | None"], Tensor]
Energies = EnergyFn | Sequence[EnergyFn]
"""One energy, or several to sum; :class:`Expert` is an ``EnergyFn`` and may appear in either."""


PAPER_NOISE = 0.005
"""The paper's image noise sigma, the default of ``LangevinConfig.noise``."""

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes ``LangevinConfig.compile`` accepts (True means ``"default"``)."""


@dataclass(frozen=True)
class LangevinConfig:
    """Settings of a Langevin chain; defaults are the paper's CIFAR-10 ones.

    ``noise`` is the paper convention's sigma (the textbook chain's noise is set by its step).
    ``temperature`` multiplies the noise variance (module docstring). ``step_size_end`` and
    ``anneal_power`` anneal the step along the chain (:func:`step_sizes`); None keeps it fixed.
    ``compile`` runs each step compiled (module docstring): True, or one of
    :data:`COMPILE_MODES` (``"reduce-overhead"``: CUDA graphs on a GPU); False is eager.
    """

    steps: int = 60
    step_size: float = 10.0
    noise: float = PAPER_NOISE
    convention: Literal["paper", "textbook"] = "paper"
    temperature: float = 1.0
    grad_clip: float | None = 0.01
    clip_mode: Literal["value", "norm"] = "value"
    bounds: tuple[float, float] | None = (0.0, 1.0)
    step_size_end: float | None = None
    anneal_power: float = 1.0
    compile: bool | str = False

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.step_size <= 0 or self.temperature <= 0:
            raise ValueError("step_size and temperature must be positive")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if self.convention not in ("paper", "textbook"):
            raise ValueError(f"convention must be 'paper' or 'textbook', got {self.convention!r}")
        if self.convention == "textbook" and self.noise != PAPER_NOISE:
            raise ValueError("noise applies to the paper convention only: the textbook chain's "
                             "noise is sqrt(step_size * temperature); set temperature instead")
        if self.clip_mode not in ("value", "norm"):
            raise ValueError(f"clip_mode must be 'value' or 'norm', got {self.clip_mode!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if self.bounds is not None and not self.bounds[0] < self.bounds[1]:
            raise ValueError(f"bounds must be (low, high) with low < high, got {self.bounds}")
        if self.step_size_end is not None and self.step_size_end <= 0:
            raise ValueError(f"step_size_end must be positive or None, got {self.step_size_end}")
        if self.anneal_power <= 0:
            raise ValueError(f"anneal_power must be positive, got {self.anneal_power}")
        if not isinstance(self.compile, bool) and self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be True, False or one of {', '.join(COMPILE_MODES)}, "
                             f"got {self.compile!r}")


def step_sizes(config: LangevinConfig) -> list[float]:
    """The step size of each of the chain's steps: constant, or annealed to ``step_size_end``."""
    s0, end, n = config.step_size, config.step_size_end, config.steps
    if end is None or n < 2:
        return [s0] * n
    return [(s0 - end) * (1 - i / (n - 1)) ** config.anneal_power + end for i in range(n)]


def paper_to_textbook(step_size: float, noise: float) -> tuple[float, float]:
    """Paper-convention (lambda, sigma) -> equivalent textbook (eta, temperature)."""
    return 2.0 * step_size, noise**2 / (2.0 * step_size)


def textbook_to_paper(eta: float, temperature: float = 1.0) -> tuple[float, float]:
    """Textbook (eta, temperature) -> equivalent paper-convention (lambda, sigma)."""
    return eta / 2.0, math.sqrt(eta * temperature)


@dataclass(frozen=True, eq=False)
class Expert:
    """One expert of a product: ``weight * energy(x, cond)`` with its OWN condition.

    Called as an energy, it ignores the chain's condition and passes ``cond`` (None included),
    so experts conditioned differently sum in one chain. ``cond`` is used as given: it must
    suit the batch being sampled (e.g. one label per chain).
    """

    energy: EnergyFn
    cond: Tensor | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not callable(self.energy):
            raise TypeError(f"Expert.energy must be callable, got {type(self.energy).__name__}")
        if not math.isfinite(self.weight):
            raise ValueError(f"Expert.weight must be finite, got {self.weight}")

    def __call__(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        e = self.energy(x, self.cond)
        return e if self.weight == 1.0 else self.weight * e


def total_energy(energy: Energies) -> EnergyFn:
    """One callable for a single energy or the sum of several (a product of experts).

    Bare energies in a sequence get the condition the sum is called with; each
    :class:`Expert` uses its own.
    """
    if callable(energy):
        return energy
    experts = tuple(energy)
    if not experts:
        raise ValueError("need at least one energy function")
    for e in experts:
        if not callable(e):
            raise TypeError(f"energies must be callables or Expert(energy, cond), got "
                            f"{type(e).__name__}; wrap an (energy, cond) pair in Expert")

    def summed(x: Tensor, cond: Tensor | None = None) -> Tensor:
        return sum(e(x, cond) for e in experts)

    return summed


def energy_grad(energy: EnergyFn, x: Tensor, cond: Tensor | None,
                create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """Energies ``(B,)`` at ``x`` and their gradient with respect to ``x``."""
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        e = energy(x, cond)
        if e.shape != x.shape[:1]:
            raise ValueError(f"energy must return shape ({x.shape[0]},), got {tuple(e.shape)}")
        (g,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
    return e, g


def _tempered(fn: EnergyFn, temperature: float) -> EnergyFn:
    if temperature == 1.0:
        return fn
    return lambda x, cond=None: fn(x, cond) / temperature


def _clip(g: Tensor, clip: float | None, mode: str) -> Tensor:
    if clip is None:
        return g
    if mode == "value":
        return g.clamp(-clip, clip)
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    scale = (clip / norm).clamp(max=1.0)
    return g * scale.view(-1, *([1] * (g.dim() - 1)))


def langevin_step(grad: Callable[[Tensor], Tensor], x: Tensor, eps: Tensor | None,
                  mask: Tensor | None, drift: float | Tensor, noise: float | Tensor, paper: bool,
                  clip: float | None, clip_mode: str, bounds: tuple[float, float] | None
                  ) -> Tensor:
    """One Langevin step of either convention; the one update rule, eager or compiled.

    ``grad(x)`` is the energy's gradient at ``x``; ``eps`` standard normal noise drawn by the
    caller (None: no noise, for a noiseless paper-convention chain). ``drift`` and ``noise``
    are the step's scalars (0-dim tensors when compiled, so an annealed step size does not
    recompile). Elements where ``mask`` is 0 are neither moved nor clamped to ``bounds``.
    """
    if paper and eps is not None:
        step_noise = eps * noise
        x = x + (step_noise if mask is None else step_noise * mask)
    step = drift * _clip(grad(x), clip, clip_mode)
    if not paper:
        step = step - noise * eps
    x = x - (step if mask is None else step * mask)
    if bounds is not None:
        clamped = x.clamp(*bounds)
        x = clamped if mask is None else torch.where(mask > 0, clamped, x)
    return x


def _compiled_body(energy: EnergyFn, x: Tensor, eps: Tensor | None, cond: Tensor | None,
                   mask: Tensor | None, drift: Tensor, noise: Tensor, paper: bool,
                   clip: float | None, clip_mode: str, bounds: tuple[float, float] | None
                   ) -> Tensor:
    """:func:`langevin_step` with the gradient by ``torch.func.grad`` (what ``compile``
    compiles: a pure function of tensors)."""
    def summed(y: Tensor) -> Tensor:
        e = energy(y, cond)
        if e.shape != y.shape[:1]:
            raise ValueError(f"energy must return shape ({y.shape[0]},), got {tuple(e.shape)}")
        return e.sum()

    return langevin_step(torch.func.grad(summed), x, eps, mask, drift, noise, paper, clip,
                         clip_mode, bounds)


_COMPILED: dict[str, Callable[..., Tensor]] = {}


def compiled_step(mode: bool | str = True) -> Callable[..., Tensor]:
    """The compiled :func:`_compiled_body` for a ``torch.compile`` mode, built once per
    process."""
    key = "default" if mode is True else str(mode)
    if key not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; use one of {', '.join(COMPILE_MODES)}")
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_compiled_body, mode=key, dynamic=False)
    return _COMPILED[key]


def _uses_cuda_graphs(mode: bool | str, x: Tensor) -> bool:
    return x.device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")


def langevin(
    energy: Energies,
    x: Tensor,
    cond: Tensor | None = None,
    config: LangevinConfig | None = None,
    *,
    mask: Tensor | None = None,
    return_chain: bool = False,
    keep_last_graph: bool = False,
    differentiable: bool = False,
    **overrides,
) -> Tensor | tuple[Tensor, Tensor]:
    """Run a Langevin chain from ``x`` and return the final samples (detached unless asked).

    ``energy`` is one energy or a sequence to sum; bare energies get ``cond``, each
    :class:`Expert` its own condition (module docstring).
    ``overrides`` replace fields of ``config`` (e.g. ``steps=20``). ``mask`` (broadcastable to
    ``x``; 1 = update, 0 = keep) freezes elements, as in inpainting: frozen elements are neither
    moved nor clamped to ``bounds``. ``return_chain`` also returns every state, shape
    ``(steps + 1, *x.shape)``. ``keep_last_graph`` keeps the autograd graph of the final step so
    a loss on the result reaches the energy's parameters (the KL term of improved contrastive
    divergence). ``differentiable`` keeps the graph of every step and of ``x`` itself, so the
    result is a differentiable function of the starting point (an attack through the sampler;
    the noise is then a fixed draw, so averaging over draws gives the expectation). With
    ``config.compile`` the steps run compiled, except a step whose graph is kept (the last one
    with ``keep_last_graph``, every one with ``differentiable``), which runs eagerly.
    """
    cfg = replace(config or LangevinConfig(), **overrides)
    fn = total_energy(energy)
    paper = cfg.convention == "paper"
    root_t = math.sqrt(cfg.temperature)
    if mask is not None:
        mask = mask.to(dtype=x.dtype, device=x.device)
    x = x if differentiable else x.detach()
    chain = [x] if return_chain else None
    fused = compiled_step(cfg.compile) if cfg.compile and not differentiable else None
    graphs = fused is not None and _uses_cuda_graphs(cfg.compile, x)
    scalars: dict[float, Tensor] = {}  # 0-dim tensors of the compiled step, made once each

    def scalar(value: float) -> Tensor:
        if value not in scalars:
            scalars[value] = torch.tensor(value, dtype=x.dtype, device=x.device)
        return scalars[value]

    for i, size in enumerate(step_sizes(cfg)):
        last = differentiable or (keep_last_graph and i == cfg.steps - 1)
        if paper:
            drift, noise = size, cfg.noise * math.sqrt(size / cfg.step_size) * root_t
        else:
            drift, noise = size / 2.0, math.sqrt(size) * root_t
        eps = torch.randn_like(x) if noise > 0 or not paper else None
        if fused is not None and not last:
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.no_grad():
                x = fused(fn, x, eps, cond, mask, scalar(drift), scalar(noise), paper,
                          cfg.grad_clip, cfg.clip_mode, cfg.bounds)
            if chain is not None:
                chain.append(x.clone() if graphs else x)
            continue

        def grad(y: Tensor, create_graph: bool = last) -> Tensor:
            return energy_grad(fn, y, cond, create_graph=create_graph)[1]

        x = langevin_step(grad, x, eps, mask, drift, noise, paper, cfg.grad_clip, cfg.clip_mode,
                          cfg.bounds)
        if not last:
            x = x.detach()
        if chain is not None:
            chain.append(x.detach())
    if graphs:
        x = x.clone()  # out of the CUDA graph's memory pool, which the next replay reuses
    if return_chain:
        return x, torch.stack(chain)
    return x


def annealed_langevin(energy_at: Callable[[float], EnergyFn], x: Tensor, cond: Tensor | None,
                      sigmas: Sequence[float], steps: int, *, temperature: float = 1.0,
                      extra: EnergyFn | None = None) -> Tensor:
    """Annealed Langevin for a noise-conditioned energy (Song & Ermon 2019), then a denoising
    step.

    ``energy_at(sigma)`` is the energy at noise level sigma. At each level of ``sigmas``
    (largest first) ``steps`` textbook steps of size sigma^2 run on it (plus ``extra``, e.g. a
    steering energy) at ``temperature``, without clipping or bounds; a final step
    ``x - sigma^2 grad E(x)`` at the last level removes the remaining noise (Tweedie).
    """
    for sigma in sigmas:
        level = energy_at(sigma)
        x = langevin(level if extra is None else (level, extra), x, cond, convention="textbook",
                     step_size=sigma**2, steps=steps, temperature=temperature, grad_clip=None,
                     bounds=None)
    sigma = sigmas[-1]
    _, grad = energy_grad(energy_at(sigma), x.detach(), cond)
    return (x - sigma**2 * grad).detach()


@dataclass
class HMCResult:
    """Final samples of an HMC run, the mean acceptance rate and (optionally) the chain."""

    samples: Tensor
    acceptance_rate: float
    chain: Tensor | None = None


def hmc(
    energy: Energies,
    x: Tensor,
    cond: Tensor | None = None,
    *,
    steps: int = 100,
    leapfrog_steps: int = 10,
    step_size: float = 0.1,
    temperature: float = 1.0,
    return_chain: bool = False,
) -> HMCResult:
    """Hamiltonian Monte Carlo with unit mass, leapfrog integration and a Metropolis correction.

    Each chain (row of ``x``) accepts or rejects independently; targets ``exp(-E / T)``.
    """
    if steps < 0 or leapfrog_steps < 1 or step_size <= 0 or temperature <= 0:
        raise ValueError("need steps >= 0, leapfrog_steps >= 1, step_size > 0, temperature > 0")
    fn = _tempered(total_energy(energy), temperature)

    def kinetic(p: Tensor) -> Tensor:
        return 0.5 * p.flatten(1).pow(2).sum(1)

    x = x.detach()
    e_x, g_x = energy_grad(fn, x, cond)
    accepted = torch.zeros((), device=x.device)
    chain = [x] if return_chain else None
    for _ in range(steps):
        p0 = torch.randn_like(x)
        q, g = x, g_x
        p = p0 - 0.5 * step_size * g
        for k in range(leapfrog_steps):
            q = q + step_size * p
            e_q, g = energy_grad(fn, q, cond)
            if k < leapfrog_steps - 1:
                p = p - step_size * g
        p = p - 0.5 * step_size * g
        log_ratio = (e_x + kinetic(p0)) - (e_q + kinetic(p))
        accept = torch.rand_like(log_ratio).log() < log_ratio
        view = (-1,) + (1,) * (x.dim() - 1)
        x = torch.where(accept.view(view), q.detach(), x)
        e_x = torch.where(accept, e_q.detach(), e_x.detach())
        g_x = torch.where(accept.view(view), g, g_x)
        accepted = accepted + accept.float().mean()
        if chain is not None:
            chain.append(x)
    rate = float(accepted) / steps if steps else float("nan")
    return HMCResult(x, rate, torch.stack(chain) if chain is not None else None)
