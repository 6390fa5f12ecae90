"""Trajectory models behind one interface: the paper's EBM and baselines (fc, ensemble).

Each model sees ``k`` z-scored context states and (if action-conditional) the actions, and
proposes the next ``segment`` states (1 by default: s_{t+1}): the EBM by Langevin sampling of
E(s_{t-k+1..t}, a_t, s_{t+1}) (PAPER.md §2) — or, with ``segment`` H > 1, of one energy over
the whole segment E(context, a_{t..t+H-1}, s_{t+1..t+H}) sampled jointly — the feed-forward
net by regression, the ensemble by sampling one member's Gaussian (PETS). By default the
baselines predict the change from s_t (``residual``, the usual and stronger parameterisation;
``residual=False`` is the paper's own baseline, which regressed the absolute next state), and
the EBM sees the candidate as s_{t+1} - s_t (``delta_input``; the same function class,
measured to train faster; ``delta_input=False`` is the paper's plain concatenation). A model
carries its normalisation statistics, state names, dataset id and the split it was trained
on, so a saved file (:func:`save_model` / :func:`load_model`) is all a rollout needs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.modelfile import load_model_file, save_model_file
from trajebm.engine.sampling import LangevinConfig, langevin

MODEL_KINDS = ("ebm", "fc", "ensemble")
OBJECTIVES = ("cd", "dsm")
ACTIVATIONS = {"lrelu": lambda: nn.LeakyReLU(0.2), "silu": nn.SiLU}
MODEL_FILE = "model.pt"
FORMAT = "trajebm-trajectory-model"
DEFAULT_SPLIT = {"seed": 0, "test_fraction": 0.1}
ExtraEnergy = Callable[[Tensor, int], Tensor]
"""``extra(states (N, D) in original units, step) -> (N,)``: added to the EBM's energy."""
ZEnergy = Callable[[Tensor, "Tensor | None"], Tensor]
"""An energy on z-scored candidates ``(N, segment * D)`` and conditions, as the sampler sees."""


def paper_sampler() -> LangevinConfig:
    """PAPER.md §2 chains: 20 steps, lambda = 1, sigma = 0.001, no clipping, no bounds."""
    return LangevinConfig(steps=20, step_size=1.0, noise=0.001, grad_clip=None, bounds=None)


@dataclass
class ModelConfig:
    """Architecture of a trajectory model; dims are filled in from the dataset."""

    kind: str = "ebm"
    state_dim: int = 31
    action_dim: int = 20
    context: int = 4
    conditional: bool = True
    hidden: int = 128
    layers: int = 3
    spectral_norm: bool = False
    members: int = 5
    init_noise: float = 0.3
    delta_input: bool = True
    residual: bool = True
    segment: int = 1
    activation: str = "lrelu"
    proposal: bool = False
    objective: str = "cd"
    sigma_max: float = 0.5
    sigma_min: float = 0.01
    noise_levels: int = 10
    level_steps: int = 2
    sampler: LangevinConfig = field(default_factory=paper_sampler)

    def __post_init__(self) -> None:
        if isinstance(self.sampler, dict):
            self.sampler = LangevinConfig(**self.sampler)
        if self.kind not in MODEL_KINDS:
            raise UsageError(f"unknown model {self.kind!r}; choose from {', '.join(MODEL_KINDS)}")
        for name in ("state_dim", "action_dim", "context", "hidden", "layers", "members",
                     "segment"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")
        if self.segment > 1 and self.kind != "ebm":
            raise UsageError("segment > 1 (joint prediction of several steps) is an EBM option")
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"activation must be one of {', '.join(ACTIVATIONS)}")
        if self.objective not in OBJECTIVES:
            raise UsageError(f"objective must be one of {', '.join(OBJECTIVES)}")
        if self.proposal and (self.kind != "ebm" or self.objective != "cd"):
            raise UsageError("proposal (a learned chain initialiser) is a contrastive-EBM option")
        if not 0 < self.sigma_min < self.sigma_max or self.noise_levels < 1 \
                or self.level_steps < 0:
            raise UsageError("need 0 < sigma_min < sigma_max, noise_levels >= 1, level_steps >= 0")

    @property
    def cond_dim(self) -> int:
        """Width of the flattened condition: k context states, then the actions if any."""
        actions = self.segment * self.action_dim if self.conditional else 0
        return self.context * self.state_dim + actions

    @property
    def out_dim(self) -> int:
        """Width of one proposal: ``segment`` states."""
        return self.segment * self.state_dim


def mlp(inputs: int, outputs: int, hidden: int, layers: int, spectral: bool = False,
        activation: str = "lrelu") -> nn.Sequential:
    """``layers`` hidden layers of leaky ReLU (0.2) or SiLU; spectral norm on hidden layers if
    asked."""
    widths = [inputs] + [hidden] * layers
    blocks: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        linear = nn.Linear(a, b)
        blocks += [nn.utils.parametrizations.spectral_norm(linear) if spectral else linear,
                   ACTIVATIONS[activation]()]
    return nn.Sequential(*blocks, nn.Linear(hidden, outputs))


class TrajectoryModel(nn.Module):
    """Shared parts: normalisation, condition layout, provenance and one proposal step."""

    def __init__(self, config: ModelConfig, state_mean: np.ndarray | None = None,
                 state_std: np.ndarray | None = None, meta: dict[str, Any] | None = None
                 ) -> None:
        super().__init__()
        self.config = config
        d = config.state_dim
        mean = torch.zeros(d) if state_mean is None else torch.as_tensor(state_mean)
        std = torch.ones(d) if state_std is None else torch.as_tensor(state_std)
        self.register_buffer("state_mean", mean.float().reshape(d))
        self.register_buffer("state_std", std.float().reshape(d))
        self.meta = dict(meta or {})

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def state_names(self) -> list[str] | None:
        return self.meta.get("state_names")

    @property
    def split(self) -> dict[str, Any]:
        """The train/test split it was trained on: ``{"seed", "test_fraction"}`` (the dataset
        reader's defaults for models saved before splits were recorded)."""
        split = self.meta.get("split") or DEFAULT_SPLIT
        return {k: split[k] for k in ("seed", "test_fraction")}

    def normalize(self, states: Tensor) -> Tensor:
        return (states - self.state_mean) / self.state_std

    def denormalize(self, z: Tensor) -> Tensor:
        return z * self.state_std + self.state_mean

    def make_cond(self, context: Tensor, actions: Tensor | None) -> Tensor:
        """Flatten z-scored context (N, k, D) and the actions (N, [segment,] A) into one row."""
        parts = [context.flatten(1)]
        if self.config.conditional:
            parts.append(actions.flatten(1))
        return torch.cat(parts, 1)

    def last_state(self, cond: Tensor) -> Tensor:
        """The most recent context state s_t (z-scored) inside a condition row."""
        k, d = self.config.context, self.config.state_dim
        return cond[:, (k - 1) * d : k * d]

    def anchor(self, cond: Tensor) -> Tensor:
        """s_t repeated for every state of a proposal: the origin of residual predictions."""
        return self.last_state(cond).repeat(1, self.config.segment)

    def propose(self, cond: Tensor, *, steps: int | None = None, temperature: float = 1.0,
                extra: ZEnergy | None = None, members: Tensor | None = None,
                compile: bool | str = False) -> Tensor:
        """One sampled z-scored proposal ``(N, segment * D)`` per condition row.

        ``compile`` runs a contrastive EBM's Langevin steps compiled (``LangevinConfig.compile``:
        True or a ``torch.compile`` mode); other models ignore it.
        """
        raise NotImplementedError

    def loss(self, x: Tensor, cond: Tensor) -> Tensor:
        """The supervised training objective of a baseline (EBMs train by contrastive
        divergence in the shared trainer instead)."""
        raise NotImplementedError


class TrajectoryEBM(TrajectoryModel):
    """E(context, actions, next states) -> scalar: an MLP on the concatenation (PAPER.md §2).

    With ``delta_input`` the candidate enters as its change from s_t: a linear change of inputs
    (same function class) that starts the network off comparing the candidate with the present.

    ``objective="cd"`` (the paper's) trains it by contrastive divergence against short-run
    Langevin chains from s_t + U(-a, a). With ``proposal`` a regression head mu(context, actions)
    (trained by MSE beside the contrastive loss, as in cooperative learning) starts the chains
    at mu + U(-a, a) instead, and the energy sees the candidate relative to mu: the energy
    judges corrections to a cheap guess rather than finding the next state from scratch.
    ``objective="dsm"`` makes it a noise-conditioned
    energy E(x, sigma) = E_theta(x, log sigma) / sigma trained by denoising score matching
    (its gradient predicts the noise added to a true next state, at noise levels from
    ``sigma_min`` to ``sigma_max``; Song & Ermon 2019) and sampled by annealed Langevin: chains
    start at s_t + N(0, sigma_max^2), take ``level_steps`` steps at each of ``noise_levels``
    geometric levels (step sigma^2), then one denoising step (Tweedie). More steps per level
    only bring the chain closer to the model's distribution, so it is no short-run sampler.
    """

    def __init__(self, config: ModelConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        c = config
        noise_input = 1 if c.objective == "dsm" else 0
        self.net = mlp(c.cond_dim + c.out_dim + noise_input, 1, c.hidden, c.layers,
                       c.spectral_norm, c.activation)
        self.proposal = (mlp(c.cond_dim, c.out_dim, c.hidden, c.layers, c.spectral_norm,
                             c.activation) if c.proposal else None)

    def center(self, cond: Tensor) -> Tensor:
        """Where chains start (before noise): s_t, or with a proposal head mu(cond)."""
        anchor = self.anchor(cond)
        return anchor if self.proposal is None else anchor + self.proposal(cond)

    def proposal_loss(self, x: Tensor, cond: Tensor) -> Tensor:
        """MSE of the proposal head on the true next states (the trainer's ``aux_loss``)."""
        return (self.center(cond) - x).pow(2).mean()

    def forward(self, x: Tensor, cond: Tensor, sigma: Tensor | float | None = None,
                center: Tensor | None = None) -> Tensor:
        """The energy; a noise-conditioned model (dsm) at level ``sigma`` (default sigma_min).

        ``center`` is :meth:`center` of ``cond`` when the caller already has it (a chain's
        condition is fixed, so :meth:`propose` computes it once, not at every Langevin step).
        """
        if self.config.delta_input:
            x = x - (self.center(cond).detach() if center is None else center)
        parts = [cond, x]
        if self.config.objective == "dsm":
            sigma = torch.as_tensor(self.config.sigma_min if sigma is None else sigma,
                                    dtype=x.dtype, device=x.device).expand(len(x))
            parts.append(sigma.log()[:, None])
            return self.net(torch.cat(parts, 1)).squeeze(-1) / sigma
        return self.net(torch.cat(parts, 1)).squeeze(-1)

    def levels(self) -> list[float]:
        """The noise levels of annealed sampling, largest first."""
        c = self.config
        return np.geomspace(c.sigma_max, c.sigma_min, c.noise_levels).tolist()

    def dsm_loss(self, x: Tensor, cond: Tensor) -> Tensor:
        """Denoising score matching at a log-uniform noise level per row (sigma^2-weighted)."""
        c = self.config
        u = torch.rand(len(x), device=x.device)
        sigma = (math.log(c.sigma_min) + u * math.log(c.sigma_max / c.sigma_min)).exp()
        eps = torch.randn_like(x)
        noisy = (x + sigma[:, None] * eps).requires_grad_(True)
        energy = self(noisy, cond, sigma) * sigma
        (grad,) = torch.autograd.grad(energy.sum(), noisy, create_graph=True)
        return (grad - eps).pow(2).mean()

    def loss(self, x: Tensor, cond: Tensor) -> Tensor:
        if self.config.objective != "dsm":
            raise NotImplementedError("a contrastive-divergence EBM trains through the trainer")
        return self.dsm_loss(x, cond)

    @torch.no_grad()
    def init_chains(self, cond: Tensor, generator: torch.Generator | None = None,
                    center: Tensor | None = None) -> Tensor:
        """Chain starts: :meth:`center` (for every state of a segment) plus U(-a, a),
        a = init_noise. The uniforms come from ``generator`` on its own device (a replay
        buffer's CPU generator serves a model on any device); ``center`` is :meth:`center`
        of ``cond`` when the caller already has it."""
        center = self.center(cond) if center is None else center
        where = center.device if generator is None else generator.device
        u = torch.rand(center.shape, generator=generator, device=where).to(center.device)
        return center + self.config.init_noise * (2.0 * u - 1.0)

    @torch.no_grad()
    def chain_energy(self, cond: Tensor, center: Tensor | None = None
                     ) -> tuple[ZEnergy, Tensor]:
        """The contrastive energy for chains whose condition stays ``cond``: ``(energy, h)``
        with ``energy(x, h) == self(x, cond)``; the trainer and :meth:`propose` sample with it.

        Everything that depends on ``cond`` alone is computed here once instead of at every
        Langevin step: the proposal head and the chains' centre, and the condition's share of
        the first layer (h = W_cond cond + b - W_x centre), so a step multiplies only the
        candidate's columns (a third fewer multiply-adds per step at the default sizes). For
        sampling: the energy's gradient is exact in x, but does not reach the first layer's
        weights. ``center`` is :meth:`center` of ``cond`` when the caller already has it.
        """
        if self.config.objective != "cd":
            raise ValueError("chain_energy is for contrastive EBMs (objective='cd')")
        first, rest = self.net[0], list(self.net)[1:]
        width = self.config.cond_dim
        weight = first.weight
        w_x = weight[:, width:]
        hidden = torch.addmm(first.bias, cond, weight[:, :width].t())
        if self.config.delta_input:
            center = self.center(cond) if center is None else center
            hidden = hidden - center @ w_x.t()

        def energy(x: Tensor, h: Tensor | None) -> Tensor:
            h = torch.addmm(h, x, w_x.t())
            for layer in rest:
                h = layer(h)
            return h.squeeze(-1)

        return energy, hidden

    def propose(self, cond: Tensor, *, steps: int | None = None, temperature: float = 1.0,
                extra: ZEnergy | None = None, members: Tensor | None = None,
                compile: bool | str = False) -> Tensor:
        was_training = self.training
        self.eval()
        try:
            if self.config.objective == "dsm":
                return self._annealed(cond, steps, temperature, extra)
            with torch.no_grad():
                center = self.center(cond)
            own, hidden = self.chain_energy(cond, center)
            energy = own if extra is None else (own, lambda x, _h: extra(x, cond))
            cfg = self.config.sampler
            return langevin(energy, self.init_chains(cond, center=center), hidden, cfg,
                            steps=cfg.steps if steps is None else steps, temperature=temperature,
                            compile=compile or cfg.compile)
        finally:
            self.train(was_training)

    def _annealed(self, cond: Tensor, steps: int | None, temperature: float,
                  extra: ZEnergy | None) -> Tensor:
        """Annealed Langevin over the noise levels, then a denoising step at the last one."""
        per_level = self.config.level_steps if steps is None else steps
        x = self.anchor(cond) + self.config.sigma_max * torch.randn_like(self.anchor(cond))
        for sigma in self.levels():
            def level(x: Tensor, c: Tensor | None, sigma: float = sigma) -> Tensor:
                return self(x, c, sigma)

            energy = level if extra is None else (level, extra)
            x = langevin(energy, x, cond, convention="textbook", step_size=sigma**2,
                         steps=per_level, temperature=temperature, grad_clip=None, bounds=None)
        sigma = self.levels()[-1]
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self(x, cond, sigma).sum(), x)
        return (x - sigma**2 * grad).detach()


class FeedForward(TrajectoryModel):
    """The feed-forward baseline, trained by MSE: s_{t+1} = s_t + f(context, a_t), or with
    ``residual=False`` the paper's own s_{t+1} = f(context, a_t)."""

    def __init__(self, config: ModelConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        c = config
        self.net = mlp(c.cond_dim, c.state_dim, c.hidden, c.layers, c.spectral_norm,
                       c.activation)

    def forward(self, cond: Tensor) -> Tensor:
        out = self.net(cond)
        return self.last_state(cond) + out if self.config.residual else out

    def loss(self, x: Tensor, cond: Tensor) -> Tensor:
        return (self(cond) - x).pow(2).mean()

    def propose(self, cond: Tensor, **_: Any) -> Tensor:
        with torch.no_grad():
            return self(cond)


class GaussianEnsemble(TrajectoryModel):
    """A probabilistic ensemble (PETS): members output a diagonal Gaussian over s_{t+1} - s_t
    (over s_{t+1} itself with ``residual=False``).

    Each rollout particle keeps one randomly drawn member for its whole rollout (TS-inf);
    ``temperature`` scales the variance.
    """

    def __init__(self, config: ModelConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        c = config
        self.members = nn.ModuleList(
            mlp(c.cond_dim, 2 * c.state_dim, c.hidden, c.layers, c.spectral_norm, c.activation)
            for _ in range(c.members))
        self.max_logvar = nn.Parameter(torch.full((c.state_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((c.state_dim,), -10.0))

    def _gaussian(self, member: nn.Module, cond: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = member(cond).chunk(2, dim=-1)
        if self.config.residual:
            mean = self.last_state(cond) + mean
        return mean, self._bound(logvar)

    def forward(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Means and log-variances, each (members, N, D)."""
        means, logvars = zip(*(self._gaussian(m, cond) for m in self.members), strict=True)
        return torch.stack(means), torch.stack(logvars)

    def _bound(self, logvar: Tensor) -> Tensor:
        """Soft-clamp log-variances between learned bounds, as in PETS."""
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - logvar)
        return self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)

    def loss(self, x: Tensor, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Gaussian NLL, each member on its own bootstrap resample of the batch (PETS)."""
        nll = x.new_zeros(())
        for member in self.members:
            idx = torch.randint(len(x), (len(x),), generator=generator).to(x.device)
            mean, logvar = self._gaussian(member, cond[idx])
            nll = nll + ((mean - x[idx]).pow(2) * torch.exp(-logvar) + logvar).mean()
        nll = nll / len(self.members)
        return nll + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum()) / len(self.max_logvar)

    def propose(self, cond: Tensor, *, temperature: float = 1.0, members: Tensor | None = None,
                **_: Any) -> Tensor:
        with torch.no_grad():
            mean, logvar = self(cond)
            pick = (torch.randint(self.config.members, (len(cond),), device=cond.device)
                    if members is None else members.to(cond.device))
            rows = torch.arange(len(cond), device=cond.device)
            mean, logvar = mean[pick, rows], logvar[pick, rows]
            return mean + torch.exp(0.5 * logvar) * temperature**0.5 * torch.randn_like(mean)


def rollout_z(model: TrajectoryModel, window: Tensor, actions: Tensor | None, horizon: int, *,
              steps: int | None = None, temperature: float = 1.0,
              extra: Callable[[Tensor, int], Tensor] | None = None,
              members: Tensor | None = None, progress: Callable[[int], None] | None = None,
              compile: bool | str = False) -> Tensor:
    """The one autoregressive rollout loop, in z units: (N, horizon, D) from (N, k, D).

    ``actions`` (N, >= horizon, A) start at a_t; a segment model that would need actions past
    the last one given repeats it (those extra predictions are dropped). ``extra(x, t)`` adds
    an energy on a z-scored state (N, D) predicted for step ``t`` (EBMs only). ``compile``
    runs an EBM's Langevin steps compiled (compiled once, reused by every step); with ``extra``
    they run eager, as its step index would make every rollout step a new compilation.
    """
    h, d, k = model.config.segment, model.config.state_dim, model.config.context
    out: list[Tensor] = []
    t = 0
    while t < horizon:
        act = None
        if actions is not None:
            act = actions[:, t : t + h]
            if act.shape[1] < h:
                act = torch.cat([act, act[:, -1:].expand(-1, h - act.shape[1], -1)], 1)
        cond = model.make_cond(window, act)
        seg_extra = None
        if extra is not None:
            def seg_extra(x: Tensor, _cond: Tensor | None, t0: int = t) -> Tensor:
                return sum(extra(x[:, j * d : (j + 1) * d], t0 + j) for j in range(h))
        nxt = model.propose(cond, steps=steps, temperature=temperature, extra=seg_extra,
                            members=members, compile=compile and seg_extra is None
                            ).detach().view(len(window), h, d)
        out.append(nxt)
        window = torch.cat([window, nxt], 1)[:, -k:]
        t += h
        if progress is not None:
            progress(h)
    return torch.cat(out, 1)[:, :horizon]


MODEL_CLASSES: dict[str, type[TrajectoryModel]] = {
    "ebm": TrajectoryEBM, "fc": FeedForward, "ensemble": GaussianEnsemble}


def build_model(config: ModelConfig, state_mean: np.ndarray | None = None,
                state_std: np.ndarray | None = None, meta: dict[str, Any] | None = None
                ) -> TrajectoryModel:
    """A fresh model of ``config.kind`` carrying the given statistics and provenance."""
    return MODEL_CLASSES[config.kind](config, state_mean, state_std, meta)


def save_model(model: TrajectoryModel, path: str | os.PathLike) -> Path:
    """Write weights, config, statistics and provenance to one file (atomically)."""
    return save_model_file(path, FORMAT, model.config, model.state_dict(), meta=model.meta)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrajectoryModel:
    """Load a model saved by :func:`save_model`; ``path`` is the file or its run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise UsageError(f"{path}: no such model file (train one with `trajebm train`)")
    record = load_model_file(path, FORMAT, "trajebm trajectory model")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    config = ModelConfig(**{k: v for k, v in record["config"].items() if k in fields})
    model = build_model(config, meta=record["meta"])
    model.load_state_dict(record["state_dict"])
    return model.to(resolve_device(device)).eval()
