"""Trajectory models behind one interface: the paper's EBM and two baselines (fc, ensemble).

Each model sees ``k`` z-scored context states and (if action-conditional) the action a_t, and
proposes s_{t+1}: the EBM by Langevin sampling of E(s_{t-k+1..t}, a_t, s_{t+1}) (PAPER.md §2),
the feed-forward net by regression, the ensemble by sampling one member's Gaussian (PETS).
Both baselines predict the change from s_t, the usual (and stronger) parameterisation; the EBM
by default sees the candidate as s_{t+1} - s_t too (``delta_input``; the same function class,
measured to train faster; ``delta_input=False`` is the paper's plain concatenation). A model
carries its normalisation statistics, state names and dataset id, so a saved file
(:func:`save_model` / :func:`load_model`) is all a rollout needs.
"""

from __future__ import annotations

import dataclasses
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
MODEL_FILE = "model.pt"
FORMAT = "trajebm-trajectory-model"
ExtraEnergy = Callable[[Tensor, int], Tensor]
"""``extra(states (N, D) in original units, step) -> (N,)``: added to the EBM's energy."""


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
    sampler: LangevinConfig = field(default_factory=paper_sampler)

    def __post_init__(self) -> None:
        if isinstance(self.sampler, dict):
            self.sampler = LangevinConfig(**self.sampler)
        if self.kind not in MODEL_KINDS:
            raise UsageError(f"unknown model {self.kind!r}; choose from {', '.join(MODEL_KINDS)}")
        for name in ("state_dim", "action_dim", "context", "hidden", "layers", "members"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def cond_dim(self) -> int:
        """Width of the flattened condition: k context states, then the action if any."""
        return self.context * self.state_dim + (self.action_dim if self.conditional else 0)



def mlp(inputs: int, outputs: int, hidden: int, layers: int, spectral: bool = False
        ) -> nn.Sequential:
    """``layers`` hidden layers of leaky ReLU (0.2); spectral norm on hidden layers if asked."""
    widths = [inputs] + [hidden] * layers
    blocks: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        linear = nn.Linear(a, b)
        blocks += [nn.utils.parametrizations.spectral_norm(linear) if spectral else linear,
                   nn.LeakyReLU(0.2)]
    return nn.Sequential(*blocks, nn.Linear(hidden, outputs))


class TrajectoryModel(nn.Module):
    """Shared parts: normalisation, condition layout, provenance and the rollout method."""

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

    def normalize(self, states: Tensor) -> Tensor:
        return (states - self.state_mean) / self.state_std

    def denormalize(self, z: Tensor) -> Tensor:
        return z * self.state_std + self.state_mean

    def make_cond(self, context: Tensor, action: Tensor | None) -> Tensor:
        """Flatten z-scored context (N, k, D) and the action (N, A) into one condition row."""
        parts = [context.flatten(1)]
        if self.config.conditional:
            parts.append(action)
        return torch.cat(parts, 1)

    def last_state(self, cond: Tensor) -> Tensor:
        """The most recent context state s_t (z-scored) inside a condition row."""
        k, d = self.config.context, self.config.state_dim
        return cond[:, (k - 1) * d : k * d]

    def propose(self, cond: Tensor, *, steps: int | None = None, temperature: float = 1.0,
                extra: Callable[[Tensor, Tensor | None], Tensor] | None = None,
                members: Tensor | None = None) -> Tensor:
        """One sampled z-scored next state per condition row."""
        raise NotImplementedError


class TrajectoryEBM(TrajectoryModel):
    """E(context, a_t, s_{t+1}) -> scalar: an MLP on the concatenation (PAPER.md §2).

    With ``delta_input`` the candidate enters as s_{t+1} - s_t: a linear change of inputs (same
    function class) that starts the network off comparing the candidate with the present.
    """

    def __init__(self, config: ModelConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        c = config
        self.net = mlp(c.cond_dim + c.state_dim, 1, c.hidden, c.layers, c.spectral_norm)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        if self.config.delta_input:
            x = x - self.last_state(cond)
        return self.net(torch.cat([cond, x], 1)).squeeze(-1)

    def init_chains(self, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Chain starts: the last context state plus U(-a, a) noise, a = ``init_noise``."""
        last = self.last_state(cond)
        u = torch.rand(last.shape, generator=generator, device=last.device)
        return last + self.config.init_noise * (2.0 * u - 1.0)

    def propose(self, cond: Tensor, *, steps: int | None = None, temperature: float = 1.0,
                extra: Callable[[Tensor, Tensor | None], Tensor] | None = None,
                members: Tensor | None = None) -> Tensor:
        energy = self if extra is None else (self, extra)
        cfg = self.config.sampler
        return langevin(energy, self.init_chains(cond), cond, cfg,
                        steps=cfg.steps if steps is None else steps, temperature=temperature)


class FeedForward(TrajectoryModel):
    """The paper's feed-forward baseline: s_{t+1} = s_t + f(context, a_t), trained by MSE."""

    def __init__(self, config: ModelConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        c = config
        self.net = mlp(c.cond_dim, c.state_dim, c.hidden, c.layers, c.spectral_norm)

    def forward(self, cond: Tensor) -> Tensor:
        return self.last_state(cond) + self.net(cond)

    def loss(self, x: Tensor, cond: Tensor) -> Tensor:
        return (self(cond) - x).pow(2).mean()

    def propose(self, cond: Tensor, **_: Any) -> Tensor:
        with torch.no_grad():
            return self(cond)


class GaussianEnsemble(TrajectoryModel):
    """A probabilistic ensemble (PETS): members output a diagonal Gaussian over s_{t+1} - s_t.

    Each rollout particle keeps one randomly drawn member for its whole rollout (TS-inf);
    ``temperature`` scales the variance.
    """

    def __init__(self, config: ModelConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        c = config
        self.members = nn.ModuleList(
            mlp(c.cond_dim, 2 * c.state_dim, c.hidden, c.layers, c.spectral_norm)
            for _ in range(c.members))
        self.max_logvar = nn.Parameter(torch.full((c.state_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((c.state_dim,), -10.0))

    def forward(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Means and log-variances, each (members, N, D)."""
        out = torch.stack([m(cond) for m in self.members])
        mean, logvar = out.chunk(2, dim=-1)
        return self.last_state(cond) + mean, self._bound(logvar)

    def _bound(self, logvar: Tensor) -> Tensor:
        """Soft-clamp log-variances between learned bounds, as in PETS."""
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - logvar)
        return self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)

    def loss(self, x: Tensor, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Gaussian NLL, each member on its own bootstrap resample of the batch (PETS)."""
        nll = x.new_zeros(())
        for member in self.members:
            idx = torch.randint(len(x), (len(x),), generator=generator).to(x.device)
            mean, logvar = member(cond[idx]).chunk(2, dim=-1)
            logvar = self._bound(logvar)
            mean = self.last_state(cond[idx]) + mean
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
