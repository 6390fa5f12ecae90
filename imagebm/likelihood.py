"""Bounds on an image EBM's test log-likelihood by AIS (docs/paper.md §3), in bits per dimension.

An image EBM's density is unnormalised: ``log p(x) = -E(x) - log Z`` with
``Z = ∫_[0,1]^D exp(-E(x)) dx`` over the run's data range. :func:`image_likelihood` estimates
``log Z`` with :func:`trajebm.engine.likelihood.ais` (HMC transitions; the box handled by a
sigmoid change of variables) and scores de-quantised test images: 8-bit pixels ``k`` become
``x = (k + u) / 256``, ``u ~ U(0, 1)`` per pixel, so that ``E_u[log p(x)] - D log 256`` is a
lower bound on the log-probability of the discrete image and
``bits/dim = -(log p(x) - D log 256) / (D ln 2)`` (8 bits/dim is the uniform density).

Which bound is which:

* the forward AIS lower bound on ``log Z`` gives an **upper** bound on the log-likelihood
  (a lower bound on bits/dim), valid in expectation whatever the chains' length;
* the reverse AIS upper bound on ``log Z`` gives a **lower** bound on the log-likelihood
  (an upper bound on bits/dim). Its reverse chains start at the de-quantised test images
  (RAISE-style), which are data, not exact samples of the model, so this side is an
  approximation, not a guarantee (see :mod:`trajebm.engine.likelihood`).

A class-conditional run has one constant ``Z_y`` per class (contrastive training leaves
each class's energy offset free, so ``exp(-E(x, y))`` has no meaningful joint normaliser).
It is scored both ways: ``conditional`` is ``log p(x | y)`` at the test label, whose bounds
are those above; ``marginal`` is ``log p(x) = log (1/K) Σ_y p(x | y)`` with a uniform class
prior, its bounds the bounds of every ``log Z_y`` plugged in (the upper side is valid in
expectation; the lower side is approximate as above and needs every class in the test
subset). One AIS run covers every class (chains conditioned per class).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor

from imagebm.classify import test_split
from imagebm.train import ImageRun, load_image_run, output_folder
from trajebm.engine.errors import UsageError
from trajebm.engine.likelihood import ais
from trajebm.engine.runinfo import write_json, write_run_info

LEVELS = 256
"""Pixel levels of 8-bit images: the de-quantisation bin is 1/256 of the [0, 1] range."""
INIT_STD = 1.6
"""The AIS base N(0, INIT_STD²) in the sigmoid's coordinates: close to the logistic's spread
(std 1.81), i.e. close to uniform on the pixel range."""


def dequantise(images: Tensor, generator: torch.Generator) -> Tensor:
    """uint8 images as ``(k + U(0, 1)) / 256`` in (0, 1), one uniform draw per pixel."""
    return (images.float() + torch.rand(images.shape, generator=generator)) / LEVELS


def bits_per_dim(log_p: float, dim: int) -> float:
    """Bits per dimension of a de-quantised density value ``log p`` (nats) on [0, 1]^dim."""
    return -(log_p - dim * math.log(LEVELS)) / (dim * math.log(2))


def _scores(log_p: dict[str, float | None], dim: int) -> dict[str, Any]:
    """Mean log-likelihoods (nats per image) and the same in bits/dim (sides swapped)."""
    bpd = {k: None if v is None else bits_per_dim(v, dim) for k, v in log_p.items()}
    return {"log_likelihood_nats": log_p,
            "bits_per_dim": {"estimate": bpd["estimate"], "lower": bpd["upper"],
                             "upper": bpd["lower"]}}


@dataclass
class LikelihoodConfig:
    """How the bounds are estimated: images scored, AIS chains and their transitions."""

    num: int = 100
    """Test images scored."""
    chains: int = 20
    """AIS chains (per class if conditional)."""
    ais_steps: int = 200
    """AIS steps (HMC transitions)."""
    leapfrog_steps: int = 5
    """Leapfrog steps per HMC transition."""
    init_std: float = INIT_STD
    """Std of the AIS base in the sigmoid's coordinates."""
    seed: int = 0
    """Seeds the images' choice and de-quantisation, and AIS."""

    def __post_init__(self) -> None:
        if self.num < 1:
            raise UsageError(f"num must be positive, got {self.num}")


def _unconditional(model: torch.nn.Module, x: Tensor, cfg: LikelihoodConfig,
                   common: dict[str, Any], dim: int) -> dict[str, Any]:
    """``log Z`` and the bounds of an unconditional model."""
    with torch.no_grad():
        mean = float(-model(x).double().mean())
    est = ais(model, tuple(x.shape[1:]), num_chains=cfg.chains, **common)
    return {"log_z": est.summary(),
            "unconditional": _scores({"estimate": mean - est.log_z, "upper": mean - est.lower,
                                      "lower": mean - est.upper}, dim)}


def _conditional(model: torch.nn.Module, x: Tensor, labels: Tensor, cfg: LikelihoodConfig,
                 common: dict[str, Any], dim: int) -> dict[str, Any]:
    """``log Z_y`` per class, and the bounds of ``log p(x | y)`` and ``log p(x)``."""
    k, chains = model.config.num_classes, cfg.chains
    classes = torch.arange(k, device=x.device)
    est = ais(model, tuple(x.shape[1:]), num_chains=k * chains,
              cond=classes.repeat_interleave(chains), target_cond=labels, **common)
    fwd = est.log_weights.view(k, chains)
    log_z = torch.logsumexp(fwd, 1) - math.log(chains)
    lower = fwd.mean(1)
    rev = est.reverse_log_weights
    y = labels.cpu()
    upper = torch.tensor([float(-rev[y == c].mean()) for c in range(k)],
                         dtype=torch.float64)  # NaN for a class absent from the images
    with torch.no_grad():
        neg_e = -model.class_energies(x).double().cpu()
    own = neg_e.gather(1, y.view(-1, 1)).squeeze(1)

    def marginal(z: Tensor) -> float:
        return float((torch.logsumexp(neg_e - z, 1) - math.log(k)).mean())

    return {
        "log_z_per_class": {"estimate": log_z.tolist(), "lower": lower.tolist(),
                            "upper": upper.tolist(), "settings": est.settings,
                            "acceptance_rate": est.acceptance_rate},
        "conditional": _scores({"estimate": float((own - log_z[y]).mean()),
                                "upper": float((own - lower[y]).mean()),
                                "lower": float((own - upper[y]).mean())}, dim),
        "marginal": _scores({"estimate": marginal(log_z), "upper": marginal(lower),
                             "lower": None if upper.isnan().any() else marginal(upper)}, dim),
        "class_prior": "uniform"}


def image_likelihood(run: str | os.PathLike | ImageRun, config: LikelihoodConfig | None = None,
                     *, data_root: str | os.PathLike | None = None, device: str = "cpu",
                     **settings: Any) -> dict[str, Any]:
    """Bounds on the mean log-likelihood of ``num`` de-quantised test images of a run.

    ``chains`` forward AIS chains (per class for a conditional run) of ``ais_steps`` HMC
    transitions with ``leapfrog_steps`` leapfrog steps estimate ``log Z``; the reverse chains
    start at the scored images. ``settings`` are :class:`LikelihoodConfig` fields changing
    ``config``. Returns a JSON-ready report (module docstring for its parts).
    """
    try:
        cfg = replace(config or LikelihoodConfig(), **settings)
    except TypeError as err:
        raise UsageError(str(err)) from None
    run = run if isinstance(run, ImageRun) else load_image_run(run, device)
    data = test_split(run.config, data_root, labelled=run.config.conditional)
    gen = torch.Generator().manual_seed(cfg.seed)
    pick = torch.randperm(len(data), generator=gen)[:cfg.num]
    x = dequantise(data.images[pick], gen).to(device)
    model = run.model.to(device).eval().requires_grad_(False)
    dim = x[0].numel()
    common = {"steps": cfg.ais_steps, "leapfrog_steps": cfg.leapfrog_steps,
              "init_std": cfg.init_std, "bounds": (0.0, 1.0), "target_samples": x,
              "seed": cfg.seed, "device": device}
    report: dict[str, Any] = {
        "run": str(run.path), "dataset": data.name, "test_images": len(x), "dimensions": dim,
        "dequantisation": f"x = (k + u) / {LEVELS}, u ~ U(0, 1) per pixel",
        "uniform_bits_per_dim": bits_per_dim(0.0, dim),
        "reverse_chains_from": "the de-quantised test images (approximate upper bound on log Z)"}
    if not model.conditional:
        return {**report, **_unconditional(model, x, cfg, common, dim)}
    labels = data.labels[pick].to(device)
    return {**report, **_conditional(model, x, labels, cfg, common, dim)}


def likelihood_to_folder(run_dir: str | os.PathLike, out_dir: str | os.PathLike,
                         config: LikelihoodConfig | None = None, *,
                         data_root: str | os.PathLike | None = None,
                         device: str = "cpu") -> dict[str, Any]:
    """:func:`image_likelihood` written to ``out_dir/likelihood.json`` (with ``run.json``);
    a run's own folder is refused. Returns the report."""
    cfg = config or LikelihoodConfig()
    out = output_folder(out_dir, "likelihood")
    report = image_likelihood(run_dir, cfg, data_root=data_root, device=device)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "likelihood.json", report)
    write_run_info(out, {"run": str(run_dir), **asdict(cfg), "data_root": data_root,
                         "device": device}, cfg.seed)
    return report
