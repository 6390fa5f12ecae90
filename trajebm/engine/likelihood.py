"""Normalising constants of energy-based models by annealed importance sampling (AIS).

docs/paper.md §3 bounds an EBM's likelihood by AIS with HMC transitions: forward chains give a
stochastic lower bound on ``log Z`` and reverse chains (started at samples of the model) an
upper bound. :func:`ais` does both for any energy ``E(x, cond) -> (B,)`` — trajectory, toy or
image — with the engine's one HMC sampler (:func:`trajebm.engine.sampling.hmc`).

The path is geometric, ``f_b(x) = -(1 - b) E0(x) - b E(x)``, from the normalised base
``exp(-E0) = N(0, init_std² I)`` (``Z0 = 1``) at ``b = 0`` to ``exp(-E)`` at ``b = 1``, over an
increasing schedule ``0 = b_0 < ... < b_K = 1``; step ``k`` adds ``f_{b_k}(x) - f_{b_{k-1}}(x)`` to
the chain's log weight and then moves ``x`` by one HMC transition (``leapfrog_steps`` leapfrog
steps and a Metropolis correction) that leaves ``exp(f_{b_k})`` invariant.

* **Forward** (chains from the base): ``E[w] = Z``, so ``log_z = log mean w`` is consistent and
  ``lower = mean log w`` satisfies ``E[lower] <= log Z`` (Jensen) for any number of steps.
* **Reverse** (chains from samples of ``exp(-E)/Z``, the same transitions in reverse order,
  Grosse et al. 2015's BDMC / Burda et al. 2015's RAISE): ``E[w_rev] = Z0 / Z``, so
  ``upper = -mean log w_rev`` satisfies ``E[upper] >= log Z``. **This holds only if the
  reverse chains start at exact samples of the target.** ``target_samples`` from a grid
  (2-D toys), or a long well-mixed chain, are (close to) exact; data or forward-AIS samples
  (the default when none are given: forward final states resampled by their weights) are
  not, and then ``upper`` is an approximation that can fall on either side of ``log Z`` (for
  data it measures how far the model is from the data as well as the estimator's gap).

Both bounds are stochastic: they hold in expectation, and their sample means carry the
standard errors reported beside them. The gap ``upper - lower`` shrinks to 0 with more steps.

``bounds=(low, high)``: the density lives on the box ``[low, high]^D`` (image pixels in [0, 1],
a toy's grid box) and ``Z = ∫_box exp(-E)``. AIS then runs in unconstrained coordinates
``u`` with ``x = low + (high - low) sigmoid(u)``, whose energy ``E(x(u)) - log|dx/du|`` has the
same ``Z``; the base is ``N(0, init_std² I)`` in ``u``. ``samples`` come back in ``x``.

HMC step size: with ``adapt_step_size`` it is multiplied by :data:`ADAPT_FACTOR` after a
transition whose acceptance rate across chains beats ``target_acceptance`` and divided by it
otherwise (as in Wu et al. 2017); the reverse chains replay the forward run's step sizes, so
both directions use the same transitions. The adaptation looks at the chains themselves, a
small departure from the fixed transitions the bounds assume; ``adapt_step_size=False`` keeps
them strictly fixed. Randomness comes from ``seed`` (the global generator is left as it was).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from trajebm.engine.errors import UsageError
from trajebm.engine.sampling import Energies, EnergyFn, hmc, total_energy

SCHEDULES = ("sigmoid", "linear")
ADAPT_FACTOR = 1.02
"""The HMC step grows by this factor after a transition accepted above target, else shrinks."""
SIGMOID_SHARPNESS = 4.0
"""The sigmoid schedule's ``delta`` (Grosse et al. 2016): ``b_t ∝ sigmoid(delta (2t/K - 1))``."""


@dataclass
class AISResult:
    """AIS estimates of ``log Z`` (nats) and the chains behind them; see the module docstring.

    ``upper`` is None when no reverse chains ran; ``upper_from`` says where they started:
    ``"target_samples"`` (valid if those are exact samples) or ``"forward_resampled"``
    (approximate). ``samples`` are the forward chains' final states (unweighted).
    """

    log_z: float
    lower: float
    upper: float | None
    lower_stderr: float
    upper_stderr: float | None
    upper_from: str
    log_weights: Tensor
    reverse_log_weights: Tensor | None
    samples: Tensor
    acceptance_rate: float
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The numbers and settings as plain JSON-ready values (no tensors)."""
        return {"log_z": self.log_z, "lower": self.lower, "upper": self.upper,
                "lower_stderr": self.lower_stderr, "upper_stderr": self.upper_stderr,
                "upper_from": self.upper_from, "acceptance_rate": self.acceptance_rate,
                "effective_sample_size": effective_sample_size(self.log_weights),
                "settings": self.settings}


def effective_sample_size(log_weights: Tensor) -> float:
    """Kish's effective sample size ``(sum w)² / sum w²`` of importance weights given as logs."""
    lw = log_weights.double()
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))


def beta_schedule(steps: int, schedule: str | Sequence[float] = "sigmoid") -> list[float]:
    """Inverse temperatures ``b_0 = 0 < ... < b_steps = 1``: sigmoid, linear, or given."""
    if not isinstance(schedule, str):
        betas = [float(b) for b in schedule]
        if len(betas) != steps + 1 or betas[0] != 0.0 or betas[-1] != 1.0 or any(
                b <= a for a, b in zip(betas[:-1], betas[1:], strict=True)):
            raise UsageError(f"a schedule must rise strictly from 0 to 1 in steps + 1 = "
                             f"{steps + 1} values")
        return betas
    if schedule == "linear":
        return [t / steps for t in range(steps + 1)]
    if schedule == "sigmoid":
        raw = [1 / (1 + math.exp(-SIGMOID_SHARPNESS * (2 * t / steps - 1)))
               for t in range(steps + 1)]
        return [0.0, *((r - raw[0]) / (raw[-1] - raw[0]) for r in raw[1:-1]), 1.0]
    raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)} or a sequence, "
                     f"got {schedule!r}")


class _Path:
    """Base and target energies in the coordinates AIS runs in (``u`` when bounded)."""

    def __init__(self, energy: EnergyFn, dim: int, init_std: float,
                 bounds: tuple[float, float] | None) -> None:
        self.energy, self.init_std, self.bounds = energy, init_std, bounds
        self.log_norm = 0.5 * dim * math.log(2 * math.pi * init_std**2)

    def to_x(self, u: Tensor) -> Tensor:
        if self.bounds is None:
            return u
        low, high = self.bounds
        return low + (high - low) * torch.sigmoid(u)

    def to_u(self, x: Tensor) -> Tensor:
        if self.bounds is None:
            return x
        low, high = self.bounds
        p = ((x - low) / (high - low)).clamp(1e-6, 1 - 1e-6)
        return torch.log(p) - torch.log1p(-p)

    def base(self, u: Tensor) -> Tensor:
        return 0.5 * u.flatten(1).pow(2).sum(1) / self.init_std**2 + self.log_norm

    def target(self, u: Tensor, cond: Tensor | None) -> Tensor:
        e = self.energy(self.to_x(u), cond)
        if self.bounds is None:
            return e
        low, high = self.bounds
        log_jac = math.log(high - low) + F.logsigmoid(u) + F.logsigmoid(-u)
        return e - log_jac.flatten(1).sum(1)

    def at(self, beta: float) -> EnergyFn:
        def mixed(u: Tensor, cond: Tensor | None = None) -> Tensor:
            return (1 - beta) * self.base(u) + beta * self.target(u, cond)

        return mixed

    @torch.no_grad()
    def gap(self, u: Tensor, cond: Tensor | None) -> Tensor:
        """``E(u) - E0(u)`` in float64: ``-(b' - b)`` times it is one step's log-weight change."""
        return (self.target(u, cond) - self.base(u)).double()


def _expand_cond(cond: Tensor | None, n: int, what: str) -> Tensor | None:
    if cond is None or cond.shape[0] == n:
        return cond
    if cond.shape[0] == 1:
        return cond.expand(n, *cond.shape[1:])
    raise UsageError(f"cond has {cond.shape[0]} rows; {what} needs 1 or {n}")


def _check(shape: Sequence[int], num_chains: int, steps: int, init_std: float,
           leapfrog_steps: int, step_size: float, target_acceptance: float,
           bounds: tuple[float, float] | None) -> tuple[int, ...]:
    if not isinstance(num_chains, int) or num_chains < 1:
        raise UsageError(f"num_chains must be a positive integer, got {num_chains!r}")
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be a positive integer, got {steps!r}")
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise UsageError(f"shape must be a sequence of positive integers, got {shape!r}"
                         ) from None
    if not dims or any(d < 1 for d in dims) or any(d != s for d, s in zip(dims, shape,
                                                                          strict=True)):
        raise UsageError(f"shape must be a non-empty sequence of positive integers, "
                         f"got {shape!r}")
    if init_std <= 0 or step_size <= 0 or leapfrog_steps < 1:
        raise UsageError("init_std and step_size must be positive and leapfrog_steps >= 1")
    if not 0 < target_acceptance < 1:
        raise UsageError(f"target_acceptance must be in (0, 1), got {target_acceptance}")
    if bounds is not None and not bounds[0] < bounds[1]:
        raise UsageError(f"bounds must be (low, high) with low < high, got {bounds}")
    return dims


def _mean_stderr(values: Tensor) -> tuple[float, float]:
    n = values.numel()
    return float(values.mean()), float(values.std() / math.sqrt(n)) if n > 1 else float("nan")


def ais(energy: Energies, shape: Sequence[int], *, num_chains: int = 100, steps: int = 1000,
        init_std: float = 1.0, cond: Tensor | None = None,
        schedule: str | Sequence[float] = "sigmoid", leapfrog_steps: int = 10,
        step_size: float = 0.1, adapt_step_size: bool = True, target_acceptance: float = 0.65,
        bounds: tuple[float, float] | None = None, target_samples: Tensor | None = None,
        target_cond: Tensor | None = None, reverse: bool = True, seed: int = 0,
        device: str | torch.device | None = None) -> AISResult:
    """Estimate ``log Z = log ∫ exp(-E(x, cond)) dx`` over samples of ``shape`` by AIS.

    ``num_chains`` forward chains of ``steps`` HMC transitions give ``log_z`` and ``lower``;
    reverse chains from ``target_samples`` (rows of ``shape``; else the forward final states
    resampled by weight, approximately) give ``upper`` unless ``reverse`` is False. ``cond``
    has 1 row (shared) or one per chain; ``target_cond`` (default ``cond``) conditions the
    reverse chains, 1 row or one per target sample. Chains with different conditions estimate
    different constants: then split ``log_weights`` by condition rather than using ``log_z``.
    ``energy`` is evaluated in whatever mode it is in (put a network in eval mode). Bad
    settings raise :class:`UsageError`.
    """
    dims = _check(shape, num_chains, steps, init_std, leapfrog_steps, step_size,
                  target_acceptance, bounds)
    betas = beta_schedule(steps, schedule)
    device = torch.device(device) if device is not None else (
        cond.device if cond is not None else torch.device("cpu"))
    if target_samples is not None:
        target_samples = target_samples.to(device=device, dtype=torch.float32)
        if tuple(target_samples.shape[1:]) != dims or len(target_samples) < 1:
            raise UsageError(f"target_samples must be (n, {', '.join(map(str, dims))}), "
                             f"got {tuple(target_samples.shape)}")
        if not torch.isfinite(target_samples).all():
            raise UsageError("target_samples contain NaN or inf")
    path = _Path(total_energy(energy), math.prod(dims), init_std, bounds)
    fwd_cond = _expand_cond(cond, num_chains, "num_chains")
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(seed)
        u = init_std * torch.randn(num_chains, *dims, device=device)
        log_w = torch.zeros(num_chains, dtype=torch.float64, device=device)
        sizes, accepted, size = [], 0.0, step_size
        for k in range(1, steps + 1):
            log_w -= (betas[k] - betas[k - 1]) * path.gap(u, fwd_cond)
            moved = hmc(path.at(betas[k]), u, fwd_cond, steps=1,
                        leapfrog_steps=leapfrog_steps, step_size=size)
            u, accepted = moved.samples, accepted + moved.acceptance_rate
            sizes.append(size)
            if adapt_step_size:
                size *= ADAPT_FACTOR if moved.acceptance_rate > target_acceptance else (
                    1 / ADAPT_FACTOR)
        log_z = float(torch.logsumexp(log_w, 0) - math.log(num_chains))
        lower, lower_err = _mean_stderr(log_w)
        upper = upper_err = rev_w = None
        upper_from = "none"
        if reverse:
            if target_samples is not None:
                start, upper_from = path.to_u(target_samples), "target_samples"
            else:
                pick = torch.multinomial(torch.softmax(log_w, 0).float(), num_chains, True)
                start, upper_from = u[pick], "forward_resampled"
            rev_cond = _expand_cond(cond if target_cond is None else target_cond, len(start),
                                    "target_samples")
            rev_w = _reverse(path, start, rev_cond, betas, sizes, leapfrog_steps)
            upper, upper_err = _mean_stderr(-rev_w)
    settings = {"num_chains": num_chains, "steps": steps, "init_std": init_std,
                "schedule": schedule if isinstance(schedule, str) else "custom",
                "leapfrog_steps": leapfrog_steps, "step_size": step_size,
                "final_step_size": sizes[-1], "adapt_step_size": adapt_step_size,
                "target_acceptance": target_acceptance,
                "bounds": list(bounds) if bounds is not None else None,
                "reverse_chains": None if rev_w is None else len(rev_w), "seed": seed}
    return AISResult(log_z, lower, upper, lower_err, upper_err, upper_from, log_w.cpu(),
                     None if rev_w is None else rev_w.cpu(), path.to_x(u).cpu(),
                     accepted / steps, settings)


def _reverse(path: _Path, u: Tensor, cond: Tensor | None, betas: list[float],
             sizes: list[float], leapfrog_steps: int) -> Tensor:
    """Reverse-AIS log weights (estimating ``log Z0/Z``) of chains started at ``u``."""
    log_w = torch.zeros(len(u), dtype=torch.float64, device=u.device)
    for k in range(len(betas) - 1, 0, -1):
        u = hmc(path.at(betas[k]), u, cond, steps=1, leapfrog_steps=leapfrog_steps,
                step_size=sizes[k - 1]).samples
        log_w += (betas[k] - betas[k - 1]) * path.gap(u, cond)
    return log_w
