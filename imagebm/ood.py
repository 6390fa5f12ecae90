"""Out-of-distribution detection by energy (docs/paper.md §3) against softmax scores.

Every score is "higher = more in-distribution", and AUROC is the probability that a random
in-distribution test image scores above a random out-of-distribution one (ties count half):

* ``ebm-min``: ``-min_y E(x, y)`` (conditional runs: the best class hypothesis);
* ``ebm-lse``: ``logsumexp_y -E(x, y)`` (conditional runs: the log of the unnormalised p(x));
* ``ebm``: ``-E(x)`` (unconditional runs; the paper's score);
* ``softmax-msp``: the reference classifier's maximum softmax probability;
* ``softmax-energy``: the reference classifier's ``logsumexp`` of its logits.

OOD sets, all made at the in-distribution size and channel count: the paper's ``uniform``
noise, ``constant`` images (one random grey level, or colour, per image) and
``interpolation`` (50/50 mixes of two in-distribution test images); procedural ``dsprites``
(white shapes on black) and ``textures`` (random gratings and checkerboards); ``svhn`` and
``dtd`` test images when the in-distribution is CIFAR-10 and their files exist; and any
user set given as an ``.npy`` array (N, C, H, W) in [0, 1].
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from imagebm.classify import EnergyClassifier, predict, reference_for, test_split
from imagebm.datasets import load_dataset, missing_files, procedural_dsprites, resize_images
from imagebm.train import ImageRun, load_image_run
from trajebm.engine.errors import UsageError
from trajebm.engine.plotting import pyplot
from trajebm.engine.runinfo import atomic_write_bytes, write_json, write_run_info

PAPER_AUROC = {"svhn": 0.63, "dtd": 0.48, "interpolation": 0.70, "constant": 0.30,
               "uniform": 1.0}
"""The paper's AUROC of -E(x) with CIFAR-10 test as in-distribution (constant/uniform recalled)."""
PAPER_SETS = ("uniform", "constant", "interpolation")
SCORE_HELP = {
    "ebm-min": "-min_y E(x, y)", "ebm-lse": "logsumexp_y -E(x, y)", "ebm": "-E(x)",
    "softmax-msp": "reference max softmax probability",
    "softmax-energy": "reference logsumexp of logits"}


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(in-distribution score > OOD score), ties half: the area under the ROC curve."""
    a, b = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("need at least one in-distribution and one OOD score")
    labels = np.r_[np.ones(a.size), np.zeros(b.size)]
    return float(roc_auc_score(labels, np.r_[a, b]))


def _textures(n: int, channels: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random sinusoidal gratings (half) and checkerboards (half), in [0, 1]."""
    v, u = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    out = np.empty((n, channels, size, size), np.float32)
    for i in range(n):
        theta, phase = rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi)
        if i % 2 == 0:
            freq = rng.uniform(1.0, size / 2.5) * 2 * math.pi / size
            wave = np.sin(freq * (u * math.cos(theta) + v * math.sin(theta)) + phase)
            pattern = 0.5 + 0.5 * wave
        else:
            cell = int(rng.integers(1, max(2, size // 2)))
            pattern = (((u // cell) + (v // cell)) % 2).astype(np.float64)
        contrast = rng.uniform(0.3, 1.0, channels)[:, None, None]
        out[i] = 0.5 + contrast * (pattern[None] - 0.5)
    return out


def generated_sets(test_images: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """The procedural OOD sets, one image per in-distribution test image, same shape."""
    n, c, h, w = test_images.shape
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.randperm(n, generator=gen), torch.randperm(n, generator=gen)
    sprites = procedural_dsprites(n, h, seed, "test").float().expand(n, c, h, w)
    return {
        "uniform": torch.rand((n, c, h, w), generator=gen),
        "constant": torch.rand((n, c, 1, 1), generator=gen).expand(n, c, h, w).contiguous(),
        "interpolation": 0.5 * test_images[pairs[0]] + 0.5 * test_images[pairs[1]],
        "dsprites": sprites.contiguous(),
        "textures": torch.from_numpy(_textures(n, c, h, rng)),
    }


def dataset_sets(dataset: str, size: int, data_root: str | os.PathLike | None,
                 limit: int) -> dict[str, Tensor]:
    """SVHN and DTD test images for a CIFAR-10 in-distribution, where their files exist; for
    MNIST (full or mnist5k), scikit-learn's 8x8 test digits upsampled: the same classes drawn
    another way, so a score must tell the style, not the class, apart."""
    if dataset in ("mnist", "mnist5k"):
        digits = load_dataset("digits", split="test", image_size=size, limit=limit, seed=0)
        return {"digits-upsampled": digits.images.float() / 255.0}
    if dataset != "cifar10":
        return {}
    found = {}
    for name in ("svhn", "dtd"):
        if not missing_files(name, data_root, "test"):
            data = load_dataset(name, data_root, "test", limit=limit, seed=0)
            images = data.images if data.images.shape[-1] == size else resize_images(
                data.images, size)
            found[name] = images.float() / 255.0
    return found


def load_ood_file(path: str | os.PathLike, shape: tuple[int, int, int]) -> Tensor:
    """A user OOD set: an ``.npy`` float array (N, C, H, W) in [0, 1] of the run's image shape."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: not a readable .npy array ({err})") from None
    if array.dtype.kind != "f":
        raise UsageError(f"{path}: OOD images must be floats in [0, 1], got dtype {array.dtype}")
    if array.ndim != 4 or tuple(array.shape[1:]) != shape or len(array) == 0:
        raise UsageError(f"{path}: OOD images must have shape (N, {shape[0]}, {shape[1]}, "
                         f"{shape[2]}) with N >= 1, got {array.shape}")
    if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
        raise UsageError(f"{path}: OOD images must be finite and in [0, 1], got values in "
                         f"[{np.nanmin(array):.3g}, {np.nanmax(array):.3g}]")
    return torch.from_numpy(array.astype(np.float32))


def score_functions(run: ImageRun, reference: torch.nn.Module
                    ) -> dict[str, Callable[[Tensor], np.ndarray]]:
    """Score name -> images -> scores (higher = more in-distribution) for this run."""
    model = run.model
    scores: dict[str, Callable[[Tensor], np.ndarray]] = {}
    if model.conditional:
        ebm = EnergyClassifier(model)
        scores["ebm-min"] = lambda x: predict(ebm, x).max(1).values.numpy()
        scores["ebm-lse"] = lambda x: predict(ebm, x).logsumexp(1).numpy()
    else:
        scores["ebm"] = lambda x: -predict(model, x).numpy()
    scores["softmax-msp"] = lambda x: predict(reference, x).softmax(1).max(1).values.numpy()
    scores["softmax-energy"] = lambda x: predict(reference, x).logsumexp(1).numpy()
    return scores


def ood_report(run_dir: str | os.PathLike, *, ood_files: tuple[str, ...] = (),
               reference: str | os.PathLike | None = None,
               data_root: str | os.PathLike | None = None, seed: int = 0,
               device: str = "cpu", progress: bool = True) -> tuple[dict[str, Any],
                                                                    dict[str, np.ndarray]]:
    """AUROC of every score on every OOD set; also returns the raw scores for histograms."""
    run = load_image_run(run_dir, device)
    cfg = run.config
    test = test_split(cfg, data_root)
    x_in = test.float()
    shape = tuple(x_in.shape[1:])
    user = {f"file:{Path(f).stem}": load_ood_file(f, shape) for f in ood_files}
    sets = {**generated_sets(x_in, seed),
            **dataset_sets(cfg.dataset, shape[-1], data_root, len(x_in)), **user}
    ref = reference_for(run, reference, data_root, device, progress)
    raw: dict[str, np.ndarray] = {}
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, fn in score_functions(run, ref).items():
        raw[f"{name}/in"] = s_in = fn(x_in)
        table[name] = {}
        for set_name, x_out in sets.items():
            raw[f"{name}/{set_name}"] = s_out = fn(x_out)
            table[name][set_name] = {"auroc": auroc(s_in, s_out), "n_out": len(s_out)}
    average = {name: float(np.mean([v["auroc"] for v in per.values()]))
               for name, per in table.items()}
    report = {"run": str(run.path), "dataset": test.name, "n_in": len(x_in),
              "scores": table, "average_auroc": average, "score_definitions":
              {k: SCORE_HELP[k] for k in table}, "higher_is": "in-distribution",
              "paper_auroc_cifar10": PAPER_AUROC, "seed": seed}
    return report, raw


def markdown_table(report: dict[str, Any]) -> str:
    """Rows: scores (and the paper's CIFAR-10 EBM); columns: OOD sets and their average."""
    scores = report["scores"]
    sets = list(next(iter(scores.values())))
    lines = [f"OOD AUROC, in-distribution: {report['dataset']} test ({report['n_in']} images); "
             "higher score = more in-distribution", "",
             "| score | " + " | ".join(sets) + " | average |",
             "|---" * (len(sets) + 2) + "|"]
    for name, per in scores.items():
        cells = [f"{per[s]['auroc']:.3f}" for s in sets]
        lines.append(f"| {name} ({SCORE_HELP[name]}) | " + " | ".join(cells)
                     + f" | {report['average_auroc'][name]:.3f} |")
    paper = [f"{PAPER_AUROC[s]:.2f}" if s in PAPER_AUROC else "–" for s in sets]
    lines.append("| paper: EBM -E(x) on CIFAR-10 | " + " | ".join(paper) + " | 0.62 (5 sets) |")
    return "\n".join(lines) + "\n"


def save_histograms(raw: dict[str, np.ndarray], path: Path) -> Path:
    """One panel per score: the in-distribution histogram against each OOD set's."""
    plt = pyplot()
    names = sorted({k.split("/")[0] for k in raw}, key=list(SCORE_HELP).index)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        keys = [k for k in raw if k.startswith(f"{name}/")]
        values = np.concatenate([raw[k] for k in keys])
        lo, hi = np.percentile(values, [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 40)
        for key in keys:
            label = key.split("/", 1)[1]
            ax.hist(np.clip(raw[key], lo, hi), bins=bins, histtype="step", density=True,
                    label="in-distribution" if label == "in" else label,
                    linewidth=2.0 if label == "in" else 1.0)
        ax.set_title(f"{name}: {SCORE_HELP[name]}", fontsize=9)
        ax.set_xlabel("score (higher = more in-distribution)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ood_to_folder(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                  ood_files: tuple[str, ...] = (), reference: str | os.PathLike | None = None,
                  data_root: str | os.PathLike | None = None, seed: int = 0,
                  device: str = "cpu", progress: bool = True) -> tuple[dict[str, Any], str]:
    """:func:`ood_report` written to ``out_dir`` (``ood.json``, the table ``ood.md``, the
    histograms ``ood.png``, ``run.json``); returns the report and its table."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    report, raw = ood_report(run_dir, ood_files=tuple(ood_files), reference=reference,
                             data_root=data_root, seed=seed, device=device, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ood.json", report)
    table = markdown_table(report)
    atomic_write_bytes(out / "ood.md", table.encode())
    save_histograms(raw, out / "ood.png")
    write_run_info(out, {"run": str(run_dir), "ood_data": list(ood_files),
                         "reference": reference}, seed)
    return report, table
