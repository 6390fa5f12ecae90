"""Toy densities: fit an EBM to a standard 2-D density or any N×D array, end to end.

``trajebm toy --density 8gaussians --out DIR`` trains with the shared trainer, replay buffer and
Langevin sampler, then writes ``samples.npy``, ``metrics.json``, ``toy.png`` and ``run.json``.

``metrics.json`` also holds ``likelihood`` (:func:`toy_likelihood`): the normalising constant of
the trained density ``exp(-E(z))`` on a box around the standardised data, estimated by AIS with
bounds (:func:`trajebm.engine.likelihood.ais`) and, for 1-D and 2-D data, computed on a grid as
the reference, with the test log-likelihood in the data's units.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from trajebm.engine.buffer import uniform_init
from trajebm.engine.errors import UsageError
from trajebm.engine.likelihood import ais
from trajebm.engine.metrics import energy_distance
from trajebm.engine.nets import MLP
from trajebm.engine.plotting import pyplot
from trajebm.engine.runinfo import write_json, write_run_info
from trajebm.engine.sampling import LangevinConfig, langevin
from trajebm.engine.train import Contrastive, ContrastiveConfig, TensorBatches, TrainConfig, Trainer

EIGHT_GAUSSIANS_RADIUS = 2.0 * np.sqrt(2.0)
EIGHT_GAUSSIANS_STD = 0.5 / np.sqrt(2.0)
COLLAPSE_GAP = 25.0
"""Mean E(samples) - E(held-out data) above this (nats) counts as collapsed: the separating
optimum puts them 1/alpha apart (33 at alpha 0.03, 100 at 0.01); fits stay within a few nats."""


def eight_gaussians_centers() -> np.ndarray:
    """The 8 mode centres of ``8gaussians`` (on a circle of radius 2√2)."""
    angles = np.arange(8) * np.pi / 4
    return EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angles), np.sin(angles)], 1)


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    centers = eight_gaussians_centers()[rng.integers(8, size=n)]
    return centers + EIGHT_GAUSSIANS_STD * rng.standard_normal((n, 2))


def _two_spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.sqrt(rng.random(n)) * 3 * np.pi
    arm = np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None]
    x = arm * np.stack([-np.cos(t) * t, np.sin(t) * t], 1) / 3
    return x + 0.1 * rng.standard_normal((n, 2))


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
    return np.stack([x1, x2], 1) * 2


def _rings(n: int, rng: np.random.Generator) -> np.ndarray:
    radius = rng.integers(1, 5, n).astype(float)
    angle = rng.random(n) * 2 * np.pi
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1) * 0.9
    return x + 0.08 * rng.standard_normal((n, 2))


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    t = rng.random(n) * np.pi
    upper = rng.random(n) < 0.5
    x = np.where(upper[:, None], np.stack([np.cos(t), np.sin(t)], 1),
                 np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
    return (x - [0.5, 0.25]) * 2 + 0.1 * rng.standard_normal((n, 2))


def _pinwheel(n: int, rng: np.random.Generator, arms: int = 5) -> np.ndarray:
    label = rng.integers(arms, size=n)
    feats = rng.standard_normal((n, 2)) * [0.3, 0.05] + [1.0, 0.0]
    angle = 2 * np.pi * label / arms + 0.25 * np.exp(feats[:, 0])
    c, s = np.cos(angle), np.sin(angle)
    return 2 * np.stack([c * feats[:, 0] - s * feats[:, 1], s * feats[:, 0] + c * feats[:, 1]], 1)


def _swissroll(n: int, rng: np.random.Generator) -> np.ndarray:
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 3
    return x + 0.15 * rng.standard_normal((n, 2))


DENSITIES: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "8gaussians": _eight_gaussians,
    "2spirals": _two_spirals,
    "checkerboard": _checkerboard,
    "rings": _rings,
    "moons": _moons,
    "pinwheel": _pinwheel,
    "swissroll": _swissroll,
}


def sample_density(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` float32 points from the named 2-D toy density."""
    if name not in DENSITIES:
        raise UsageError(f"unknown density {name!r}; choose from {', '.join(DENSITIES)}")
    return DENSITIES[name](n, np.random.default_rng(seed)).astype(np.float32)


class MLPEnergy(nn.Module):
    """A smooth MLP energy ``E(x) -> (B,)`` (SiLU keeps Langevin gradients well behaved)."""

    def __init__(self, dim: int, hidden: int = 128, layers: int = 3) -> None:
        super().__init__()
        self.net = MLP(dim, 1, hidden, layers, activation="silu")

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.net(x).squeeze(-1)


@dataclass
class ToyConfig:
    """Settings of a toy fit; the defaults finish in under 2 minutes on 2 CPU cores.

    ``ais_*`` size the AIS estimate of log Z (0 steps: none; about 20 s on one core);
    ``grid_points`` per dimension is the reference grid's resolution (1-D and 2-D data). The
    energy penalty ``alpha`` is 0.03: at 0.001, 5 of the 7 standard densities fell into the
    separating optimum E(data) = -1/(2 alpha) = -500, E(samples) = +500 (samples off the data).
    Its price is blur: 9% of 8gaussians samples (14% for unequal mode weights; medians of 3
    seeds) lie beyond 3σ of every mode. alpha 0.01 is sharp there (1.9%, 1.7%) but collapses
    on 2spirals, swissroll and rings, even with the collapse guard; a lower sampling temperature
    sharpens the modes but skews unequal mode weights (docs/results/trajectories.md, "Toy
    densities: no collapse, no blur").
    """

    num_train: int = 20000
    """Training points drawn from a named density."""
    num_test: int = 4000
    """Held-out points (at most a fifth of a given array)."""
    num_samples: int = 4000
    """Samples drawn at the end."""
    langevin_steps: int = 200
    """Langevin steps of those samples, continuing chains of the replay buffer."""
    sample_temperature: float = 1.0
    """Temperature of those steps (the training chain's is 1)."""
    hidden: int = 128
    """Width of the energy MLP."""
    batch_size: int = 128
    """Data points per training batch."""
    seed: int = 0
    """Seeds the data, the split, the trainer and the samples (the trainer's own seed is not
    used)."""
    ais_chains: int = 500
    """AIS chains for log Z."""
    ais_steps: int = 1000
    """AIS steps (0: no AIS, the grid alone)."""
    ais_leapfrog_steps: int = 2
    """Leapfrog steps per AIS transition."""
    grid_points: int = 1024
    """Grid points per dimension of the reference log Z (1-D and 2-D data)."""
    sampler: LangevinConfig = field(default_factory=lambda: LangevinConfig(
        steps=10, step_size=0.005, convention="textbook", grad_clip=None, bounds=None))
    """The training chain (textbook convention)."""
    contrastive: ContrastiveConfig = field(
        default_factory=lambda: ContrastiveConfig(alpha=0.03))
    """The contrastive objective (energy penalty alpha 0.03, replay buffer)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=5000, lr=2e-3, cosine_decay=True, checkpoint_every=1000, log_every=50))
    """The trainer's settings."""

    def __post_init__(self) -> None:
        if self.train.steps < 1:
            raise ValueError(f"steps must be positive, got {self.train.steps}")
        if self.sample_temperature <= 0:
            raise ValueError(f"sample_temperature must be positive, got {self.sample_temperature}")
        if self.ais_steps < 0:
            raise ValueError(f"ais_steps must be >= 0, got {self.ais_steps}")
        for name in ("ais_chains", "num_train", "num_test", "num_samples", "hidden",
                     "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def validate_array(data: np.ndarray, name: str = "data", min_rows: int = 100) -> np.ndarray:
    """Check an N×D float array for fitting, returning it as float32 (UsageError otherwise)."""
    if not np.issubdtype(data.dtype, np.floating) and not np.issubdtype(data.dtype, np.integer):
        raise UsageError(f"{name}: expected a float array, got dtype {data.dtype}")
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise UsageError(f"{name}: expected an N×D array, got shape {data.shape}")
    bad = ~np.isfinite(data).all(1)
    if bad.any():
        raise UsageError(f"{name}: {int(bad.sum())} rows contain NaN or inf "
                         f"(first at row {int(np.argmax(bad))})")
    if len(data) < min_rows:
        raise UsageError(f"{name}: needs at least {min_rows} rows, got {len(data)}")
    return data.astype(np.float32)


def load_array(path: str | os.PathLike) -> np.ndarray:
    """Load an N×D float array from a ``.npy`` file, with one-line errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise UsageError(f"{path}: not a readable .npy array ({err})") from None
    if not isinstance(data, np.ndarray):
        raise UsageError(f"{path}: expected a single .npy array, got a {type(data).__name__}")
    return validate_array(data, str(path))


def mode_coverage(samples: np.ndarray) -> dict[str, object]:
    """Per-mode sample fractions for 8gaussians and the fraction further than 3σ from every mode."""
    d = np.linalg.norm(samples[:, None, :] - eight_gaussians_centers()[None], axis=-1)
    weights = np.bincount(d.argmin(1), minlength=8) / len(samples)
    outliers = float((d.min(1) > 3 * EIGHT_GAUSSIANS_STD).mean())
    return {"mode_weights": weights.round(4).tolist(), "outlier_fraction": outliers,
            "all_modes_covered": bool((weights >= 0.05).all() and (weights <= 0.20).all()),
            "outliers_below_10pct": outliers < 0.10}


@dataclass
class ToyResult:
    """Samples in the data's units, the trained energy and the standardisation used."""

    samples: np.ndarray
    model: MLPEnergy
    mean: np.ndarray
    std: np.ndarray
    metrics: dict


@dataclass
class Trained:
    """A trained toy energy on standardised data and the replay buffer's chains."""

    model: MLPEnergy
    chains: Tensor
    summary: dict
    seconds: float


def train_toy(z: Tensor, out_dir: str | os.PathLike, cfg: ToyConfig) -> Trained:
    """Train the energy on standardised points ``z`` (N×D) with the replay buffer."""
    dim = z.shape[1]
    low, high = float(z.min()) - 0.5, float(z.max()) + 0.5
    torch.manual_seed(cfg.seed)
    model = MLPEnergy(dim, cfg.hidden)
    objective = Contrastive.build(model, cfg.sampler, cfg.contrastive, (dim,),
                                  uniform_init(low, high, (dim,)), seed=cfg.seed)
    trainer = Trainer(model, TensorBatches(z, batch_size=cfg.batch_size, seed=cfg.seed),
                      objective, replace(cfg.train, seed=cfg.seed), Path(out_dir))
    t0 = time.perf_counter()
    summary = trainer.fit()
    seconds = time.perf_counter() - t0
    return Trained(model.eval(), objective.buffer.data.float(), summary, seconds)


def draw_samples(trained: Trained, cfg: ToyConfig) -> Tensor:
    """``num_samples`` standardised samples: buffer chains continued by the sampling chain."""
    pick = torch.randint(len(trained.chains), (cfg.num_samples,),
                         generator=torch.Generator().manual_seed(cfg.seed + 1))
    return langevin(trained.model, trained.chains[pick], None, cfg.sampler,
                    steps=cfg.langevin_steps, temperature=cfg.sample_temperature)


def score_samples(trained: Trained, z_samples: Tensor, train: np.ndarray, test: np.ndarray,
                  mean: np.ndarray, std: np.ndarray, cfg: ToyConfig) -> dict:
    """Energy distances (samples, Gaussian fit, train vs test) and the energy gap."""
    samples = (z_samples.numpy() * std + mean).astype(np.float32)
    gauss = np.random.default_rng(cfg.seed).multivariate_normal(
        mean, np.atleast_2d(np.cov(train, rowvar=False)), size=cfg.num_samples)
    with torch.no_grad():
        e_test = trained.model(torch.as_tensor((test - mean) / std, dtype=torch.float32))
        gap = float(trained.model(z_samples).mean() - e_test.mean())
    return {
        "energy_distance": energy_distance(samples, test),
        "energy_distance_gaussian_fit": energy_distance(gauss, test),
        "energy_distance_train_vs_test": energy_distance(train[: len(test)], test),
        "energy_gap": gap, "collapsed": gap > COLLAPSE_GAP,
        "num_samples": len(samples), "train_seconds": round(trained.seconds, 2),
        "train_steps": trained.summary["step"], "rollbacks": trained.summary["rollbacks"],
        "final_loss": trained.summary.get("loss"),
    }


def fit_toy(train: np.ndarray, test: np.ndarray, out_dir: str | os.PathLike,
            config: ToyConfig | None = None) -> ToyResult:
    """Fit an EBM to ``train`` (N×D), draw Langevin samples, score them against ``test``.

    Data are standardised per dimension; samples come back in the original units.
    """
    cfg = config or ToyConfig()
    mean, std = train.mean(0), train.std(0) + 1e-8
    trained = train_toy(torch.as_tensor((train - mean) / std, dtype=torch.float32), out_dir, cfg)
    z_samples = draw_samples(trained, cfg)
    metrics = score_samples(trained, z_samples, train, test, mean, std, cfg)
    samples = (z_samples.numpy() * std + mean).astype(np.float32)
    return ToyResult(samples, trained.model, mean, std, metrics)


BOX_MARGIN = 1.0
"""The likelihood box reaches this far (standardised units) beyond the training data."""
EDGE_WIDTH = 0.25
"""``edge_mass`` is the density's mass within this distance of the box's faces."""


@dataclass
class Grid:
    """Midpoints of a ``points``^dim grid over ``[low, high]^dim`` and ``-E`` at each."""

    cells: Tensor
    neg_energy: Tensor
    log_cell_volume: float

    @property
    def log_z(self) -> float:
        return torch.logsumexp(self.neg_energy, 0).item() + self.log_cell_volume


@torch.no_grad()
def energy_grid(model: nn.Module, low: float, high: float, dim: int, points: int) -> Grid:
    """Evaluate ``model`` on the midpoints of a ``points``^dim grid over the box (dim <= 2)."""
    if dim > 2:
        raise UsageError(f"grid integration is for 1-D and 2-D data, got {dim} dimensions")
    h = (high - low) / points
    axis = low + h * (torch.arange(points, dtype=torch.float64) + 0.5)
    cells = torch.cartesian_prod(*[axis] * dim).view(-1, dim).float()
    neg_e = torch.cat([-model(chunk).double() for chunk in cells.split(65536)])
    return Grid(cells, neg_e, dim * math.log(h))


def grid_log_z(model: nn.Module, low: float, high: float, dim: int,
               points: int = 1024) -> tuple[Grid, float]:
    """The grid whose ``log_z`` is log ∫ exp(-E) over the box (midpoint rule), and its error.

    The midpoint rule's error falls as the cell width squared, so the difference to the grid
    of half the points, divided by 3 (Richardson), estimates the error of the finer one.
    """
    if points < 4 or points % 2:
        raise UsageError(f"grid points must be an even number >= 4, got {points}")
    fine, coarse = (energy_grid(model, low, high, dim, n) for n in (points, points // 2))
    return fine, abs(fine.log_z - coarse.log_z) / 3


def grid_samples(grid: Grid, n: int, seed: int = 0) -> Tensor:
    """``n`` samples of ``exp(-E)/Z`` on the box: a grid cell by its mass, then uniform in it.

    Exact up to the variation of ``E`` within a cell; they start the reverse AIS chains.
    """
    gen = torch.Generator().manual_seed(seed)
    pick = torch.multinomial(torch.softmax(grid.neg_energy, 0).float(), n, True, generator=gen)
    h = math.exp(grid.log_cell_volume / grid.cells.shape[1])
    return grid.cells[pick] + h * (torch.rand(n, grid.cells.shape[1], generator=gen) - 0.5)


def toy_likelihood(result: ToyResult, train: np.ndarray, test: np.ndarray,
                   config: ToyConfig | None = None) -> dict:
    """Log Z of the trained density by AIS (with bounds) and, in 1-D and 2-D, by a grid.

    The density is ``exp(-E(z)) / Z`` on the box ``[min z - 1, max z + 1]^D`` of the
    standardised training data ``z`` (an MLP energy need not be normalisable on all of R^D).
    ``edge_mass`` is the grid's mass within 0.25 of the box's faces: small means the box holds
    essentially all of the density. With a grid, the reverse AIS chains start at grid samples
    (exact up to the cell size), so ``upper`` is a valid stochastic bound; without one they
    start at resampled forward states (approximate). ``test_log_likelihood`` is the mean over
    test points inside the box, per point, in the data's units.
    """
    cfg = config or ToyConfig()
    model = result.model.eval()
    z = (train - result.mean) / result.std
    low, high = float(z.min()) - BOX_MARGIN, float(z.max()) + BOX_MARGIN
    dim = train.shape[1]
    out: dict = {"box": [low, high], "units": "nats, standardised data z = (x - mean) / std"}
    exact, target = None, None
    if dim <= 2:
        t0 = time.perf_counter()
        grid, err = grid_log_z(model, low, high, dim, cfg.grid_points)
        exact = grid.log_z
        near = torch.minimum(grid.cells - low, high - grid.cells).amin(1) < EDGE_WIDTH
        target = grid_samples(grid, cfg.ais_chains, cfg.seed)
        out["grid"] = {"log_z": exact, "error_estimate": err, "points_per_dim": cfg.grid_points,
                       "rule": "midpoint, Richardson error estimate",
                       "edge_mass": float(torch.softmax(grid.neg_energy, 0)[near].sum()),
                       "seconds": round(time.perf_counter() - t0, 2)}
    if cfg.ais_steps > 0:
        t0 = time.perf_counter()
        est = ais(model, (dim,), num_chains=cfg.ais_chains, steps=cfg.ais_steps,
                  leapfrog_steps=cfg.ais_leapfrog_steps, bounds=(low, high),
                  target_samples=target, seed=cfg.seed)
        out["ais"] = {**est.summary(), "seconds": round(time.perf_counter() - t0, 2)}
        if exact is not None:
            out["ais"]["abs_error"] = abs(est.log_z - exact)
            out["ais"]["bounds_bracket_grid"] = bool(est.lower <= exact <= est.upper)
    log_z, source = exact, "grid"
    if exact is None and cfg.ais_steps > 0:
        log_z, source = est.log_z, "ais"
    if log_z is not None:
        z_test = torch.as_tensor((test - result.mean) / result.std, dtype=torch.float32)
        inside = ((z_test >= low) & (z_test <= high)).all(1)
        with torch.no_grad():
            neg_e = -model(z_test[inside]).double()
        out["test_log_likelihood"] = float(neg_e.mean()) - log_z - float(np.log(result.std).sum())
        out["test_log_likelihood_log_z_from"] = source
        out["test_fraction_inside_box"] = float(inside.float().mean())
    return out


def plot_toy(result: ToyResult, train: np.ndarray, path: str | os.PathLike) -> None:
    """Data, samples and (for 2-D) the learned energy landscape side by side, as a PNG."""
    plt = pyplot()
    dim = train.shape[1]
    if dim != 2:
        cols = min(dim, 4)
        fig, axes = plt.subplots(1, cols, figsize=(4 * cols, 3.5), squeeze=False)
        for d, ax in enumerate(axes[0]):
            bins = np.histogram_bin_edges(train[:, d], 60)
            ax.hist(train[:, d], bins, density=True, alpha=0.5, label="data")
            ax.hist(result.samples[:, d], bins, density=True, alpha=0.5, label="samples")
            ax.set_title(f"dimension {d}")
        axes[0][0].legend()
    else:
        fig, axes = plt.subplots(1, 3, figsize=(12, 4))
        lo, hi = np.percentile(train, 0.5, 0) - 1, np.percentile(train, 99.5, 0) + 1
        for ax, pts, title in ((axes[0], train, "data"), (axes[1], result.samples, "samples")):
            ax.hist2d(pts[:, 0], pts[:, 1], bins=120, range=[[lo[0], hi[0]], [lo[1], hi[1]]],
                      cmap="magma")
            ax.set_title(title)
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        grid = (np.stack([gx.ravel(), gy.ravel()], 1) - result.mean) / result.std
        with torch.no_grad():
            e = result.model(torch.as_tensor(grid, dtype=torch.float32)).numpy()
        neg_e = np.clip(-e, np.percentile(-e, 5), None).reshape(gx.shape)
        axes[2].imshow(neg_e, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]),
                       cmap="magma", aspect="auto")
        axes[2].set_title("learned −E (log density + const)")
        for ax in axes:
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_toy(out_dir: str | os.PathLike, density: str | None = None,
            data_path: str | os.PathLike | None = None, config: ToyConfig | None = None,
            overwrite: bool = False) -> dict:
    """The `trajebm toy` job: fit, sample, score, plot; returns the metrics written."""
    cfg = config or ToyConfig()
    if (density is None) == (data_path is None):
        raise UsageError("give exactly one of --density NAME or --data FILE.npy")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out}: output directory is not empty (use --overwrite)")
    if density is not None:
        data = sample_density(density, cfg.num_train + cfg.num_test, cfg.seed)
    else:
        data = load_array(data_path)
    perm = np.random.default_rng(cfg.seed).permutation(len(data))
    n_test = min(cfg.num_test, max(len(data) // 5, 1))
    test, train = data[perm[:n_test]], data[perm[n_test:]]
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("checkpoint*.pt"):  # --overwrite: start over, do not resume
        stale.unlink()
    write_run_info(out, cfg, cfg.seed, density=density,
                   data=None if data_path is None else os.fspath(data_path))
    result = fit_toy(train, test, out, cfg)
    metrics = {"density": density, "data": None if data_path is None else os.fspath(data_path),
               **result.metrics}
    if density == "8gaussians":
        metrics["modes"] = mode_coverage(result.samples)
    metrics["likelihood"] = toy_likelihood(result, train, test, cfg)
    np.save(out / "samples.npy", result.samples)
    plot_toy(result, train, out / "toy.png")
    write_json(out / "metrics.json", metrics)
    return metrics
