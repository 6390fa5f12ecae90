"""Restoring test images with a trained EBM: box inpainting, salt-and-pepper, cross-class mapping.

docs/paper.md §3. Each task corrupts held-out test images and runs Langevin dynamics on the run's
energy from the corrupted image, with the run's evaluation sampler (its step, noise and
evaluation gradient clip; final weights) for :data:`DEFAULT_LANGEVIN_STEPS` steps (short-run
runs: their training chain's length) unless told:

* ``inpaint``: a box (default the bottom half) is replaced by the run's chain-start noise and
  only its pixels move (the engine's ``langevin(mask=...)``); the rest stays exactly as given.
* ``saltpepper``: 5% of the pixels (all channels of a position) are set to 0.1 and another 5%
  to 0.9. By default the model is told which pixels these are and only they move, as in
  inpainting. With ``blind`` it is not: every pixel moves, with the smaller step of
  :data:`imagebm.classify.REFINE_STEP_SIZE`, and the model must find the corrupted pixels by
  their energy; the error on the untouched pixels is then reported too.
* ``crossclass`` (conditional runs): a test image of class a is the start of a chain
  conditioned on class b (default a + 1 mod K); every pixel moves.

A conditional run restores under the marginal energy ``-logsumexp_y -E(x, y)`` (the image's
free energy, so it is not told the label), or under ``E(x, y_true)`` with ``given_label``. The
three references get the same information the model gets: the training mean image (the class's
mean with ``given_label``), the nearest training image on the visible pixels and the mean of the
``knn_k`` nearest (both among the same class with ``given_label``) fill the masked pixels. Scores
are MSE and PSNR (peak 1) on the masked pixels. Cross-class mapping is judged by the dataset's
domain classifier (:func:`imagebm.evaluate.domain_classifier`; digits, MNIST and dSprites): the
fraction of results it assigns to class b (beside the same fraction for the unchanged sources),
and the distance to the source image.

``imagebm restore --run RUN --task TASK --out DIR`` writes ``originals.npy``,
``corrupted.npy`` (the chains' starts), ``restored.npy``, ``masks.npy`` (1 = a pixel to fill;
all ones for cross-class mapping), all float32 (N, C, H, W) in [0, 1], ``labels.npy`` (and
``targets.npy``), ``restore.png`` (rows: original, corrupted, restored) and ``metrics.json``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from imagebm.classify import REFINE_STEP_SIZE, test_split
from imagebm.datasets import ImageData
from imagebm.evaluate import DOMAIN_DATASETS, domain_classifier
from imagebm.grid import save_grid
from imagebm.metrics import nearest
from imagebm.models import ImageEBM
from imagebm.sample import eval_mode
from imagebm.train import (
    ImageRun,
    chain_init,
    load_image_run,
    load_training_data,
    output_folder,
)
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import atomic_save_npy, write_json, write_run_info
from trajebm.engine.sampling import EnergyFn, LangevinConfig, langevin

TASKS = ("inpaint", "saltpepper", "crossclass")
SALT, PEPPER = 0.9, 0.1
FIGURE_COLUMNS = 16
DEFAULT_LANGEVIN_STEPS = {"inpaint": 30, "saltpepper": 30, "blind": 100, "crossclass": 10}
"""Langevin steps per task for persistent runs (``blind``: salt-and-pepper, mask unknown,
smaller step). Chosen on the CPU ``digits`` preset: longer chains at the run's step drift away
from the visible pixels (inpainting) and turn a cross-class start into an unrelated sample of
the target class. Short-run runs (:func:`imagebm.presets.short_run`) take their training chain's
length, except blind."""


@dataclass
class RestoreConfig:
    """One restoration experiment on ``num`` test images (see the module docstring).

    ``chains`` > 1 (inpaint and salt-and-pepper with a known mask) runs that many chains per
    image, each from fresh noise in the pixels to fill, and returns their mean: an estimate of
    the posterior mean, the fill with the least expected squared error, which is what the
    point-estimate references (mean image, nearest neighbour) are compared on.
    """

    task: Literal["inpaint", "saltpepper", "crossclass"] = "inpaint"
    """inpaint: fill a box; saltpepper: restore the pixels set to 0.1 and 0.9; crossclass: map
    test images to another class."""
    num: int = 64
    """Test images to restore."""
    langevin_steps: int | None = None
    """Langevin steps (default per task: inpaint 30, saltpepper 30, blind 100, crossclass 10;
    short-run runs: their training chain's)."""
    step_size: float | None = None
    """Langevin step (default: the run's; blind salt-and-pepper: REFINE_STEP_SIZE)."""
    grad_clip: float | None = None
    """Gradient clip (default: the run's evaluation clip)."""
    seed: int = 0
    """Seeds the choice of images, the corruption and the chains."""
    box: tuple[int, int, int, int] | None = None
    """inpaint: the box to fill, (top, left, height, width) in pixels (default: the bottom
    half)."""
    fraction: float = 0.05
    """saltpepper: share of the pixels set to each of 0.1 and 0.9."""
    blind: bool = False
    """saltpepper: do not tell the model which pixels are corrupted."""
    given_label: bool = False
    """Conditional runs: restore under E(x, true label), not the free energy."""
    source: int | None = None
    """crossclass: source class (default: test images of every class)."""
    target: int | None = None
    """crossclass: target class (default: source + 1 mod K)."""
    chains: int = 1
    """Chains per image, averaged (the posterior mean; inpaint, saltpepper)."""
    knn_k: int = 10
    """k-NN mean reference (inpaint, saltpepper): the masked pixels of the ``knn_k`` training
    images nearest on the visible pixels, averaged; a model-free estimate of the posterior mean
    that ``chains`` estimates. 10 is within 0.1 dB of the best of k = 1, 3, 5, 10, 20, 50 on
    every digits and mnist5k task; 1 is the nearest-neighbour fill."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UsageError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.num < 1 or (self.langevin_steps is not None and self.langevin_steps < 0):
            raise UsageError(f"need num >= 1 and langevin_steps >= 0, got {self.num} and "
                             f"{self.langevin_steps}")
        if (self.step_size is not None and self.step_size <= 0) or (
                self.grad_clip is not None and self.grad_clip <= 0):
            raise UsageError("step_size and grad_clip must be positive")
        if not 0 < self.fraction <= 0.5:
            raise UsageError(f"fraction must be in (0, 0.5], got {self.fraction}")
        if self.blind and self.task != "saltpepper":
            raise UsageError("blind applies to the saltpepper task only")
        if self.box is not None and self.task != "inpaint":
            raise UsageError("a box applies to the inpaint task only")
        if self.box is not None and (len(self.box) != 4 or min(self.box) < 0
                                     or min(self.box[2:]) < 1):
            raise UsageError(f"box must be (top, left, height, width) with top, left >= 0 and "
                             f"height, width >= 1, got {self.box}")
        if self.task != "crossclass" and (self.source is not None or self.target is not None):
            raise UsageError("source and target classes apply to the crossclass task only")
        if self.chains < 1 or (self.chains > 1 and (self.task == "crossclass" or self.blind)):
            raise UsageError(f"chains must be >= 1, and > 1 only for inpaint or salt-and-pepper "
                             f"with a known mask; got {self.chains}")
        if self.knn_k < 1:
            raise UsageError(f"knn_k must be >= 1, got {self.knn_k}")
        if self.task == "crossclass" and self.given_label:
            raise UsageError("crossclass conditions on the target class; given_label does not "
                             "apply")


@dataclass
class RestoreResult:
    """Images (N, C, H, W) in [0, 1] on the CPU, masks (1 = pixel to fill), labels, scores."""

    originals: Tensor
    corrupted: Tensor
    restored: Tensor
    masks: Tensor
    labels: Tensor | None
    targets: Tensor | None
    metrics: dict[str, Any]


def box_mask(shape: tuple[int, int, int], box: tuple[int, int, int, int] | None = None) -> Tensor:
    """A (C, H, W) mask of 1s in ``box`` = (top, left, height, width); None: the bottom half."""
    c, h, w = shape
    top, left, height, width = box if box is not None else (h // 2, 0, h - h // 2, w)
    if top + height > h or left + width > w:
        raise UsageError(f"box {(top, left, height, width)} does not fit {h}x{w} images")
    mask = torch.zeros(shape)
    mask[:, top:top + height, left:left + width] = 1.0
    return mask


def check_mask(mask: Tensor | np.ndarray, num: int, shape: tuple[int, int, int]) -> Tensor:
    """A user mask as float (num, C, H, W) of 0/1: given as (H, W), (C, H, W) or (num, C, H, W)."""
    m = torch.as_tensor(np.asarray(mask)).float()
    c, h, w = shape
    if m.ndim == 2:
        m = m.unsqueeze(0)
    if m.ndim == 3:
        m = m.unsqueeze(0)
    if m.ndim != 4 or m.shape[0] not in (1, num) or m.shape[1] not in (1, c) \
            or tuple(m.shape[2:]) != (h, w):
        raise UsageError(f"mask has shape {tuple(np.shape(mask))}; expected ({h}, {w}), "
                         f"({c}, {h}, {w}) or ({num}, {c}, {h}, {w})")
    if not bool(((m == 0) | (m == 1)).all()):
        raise UsageError("mask values must be 0 (keep) or 1 (fill)")
    m = m.expand(num, c, h, w).clone()
    if not bool((m.flatten(1).sum(1) > 0).all()):
        raise UsageError("the mask selects no pixel to fill in some image")
    return m


def salt_and_pepper(images: Tensor, fraction: float,
                    generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Set ``fraction`` of each image's pixels to 0.1 and as many others to 0.9 (all channels);
    return the corrupted images and the mask of those pixels."""
    n, c, h, w = images.shape
    k = max(1, round(fraction * h * w))
    order = torch.argsort(torch.rand(n, h * w, generator=generator), dim=1)
    value = torch.full((n, h * w), float("nan"))
    value.scatter_(1, order[:, :k], PEPPER)
    value.scatter_(1, order[:, k:2 * k], SALT)
    value = value.view(n, 1, h, w).expand(n, c, h, w)
    mask = (~value.isnan()).float()
    return torch.where(mask > 0, value, images), mask


def free_energy(model: ImageEBM) -> EnergyFn:
    """The marginal energy ``-logsumexp_y -E(x, y)`` of a conditional model (labels ignored)."""

    def energy(x: Tensor, cond: Tensor | None = None) -> Tensor:
        return -torch.logsumexp(-model.class_energies(x), dim=1)

    return energy


def masked_scores(estimate: Tensor, truth: Tensor, mask: Tensor) -> dict[str, float]:
    """MSE over the masked elements and the PSNR (peak 1) of that MSE."""
    mse = float(((estimate - truth) ** 2 * mask).sum() / mask.sum().clamp_min(1))
    return {"mse": mse, "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12)))}


def check_knn_k(k: int, train_labels: Tensor | None, num_train: int,
                labels: Tensor | None = None) -> None:
    """A UsageError unless 1 <= ``k`` <= the training images (of each class in ``labels``)."""
    if not 1 <= k <= num_train:
        raise UsageError(f"knn_k must be in 1..{num_train} (the training images), got {k}")
    if labels is not None and train_labels is not None:
        for y in labels.unique().tolist():
            count = int((train_labels == y).sum())
            if k > count:
                raise UsageError(f"knn_k={k} exceeds the {count} training images of class {y}")


def reference_fills(corrupted: Tensor, masks: Tensor, labels: Tensor | None, data: ImageData,
                    num_classes: int, knn_k: int) -> dict[str, Tensor]:
    """Mean-image, nearest-neighbour and k-NN mean fills of the masked pixels (class-wise with
    ``labels``); the k-NN mean averages the ``knn_k`` training images nearest on the visible
    pixels (the first of them is the nearest neighbour)."""
    check_knn_k(knn_k, data.labels, len(data), labels)
    train = data.float()
    if labels is None:
        mean = train.mean(0, keepdim=True).expand_as(corrupted)
        allowed = None
    else:
        means = torch.stack([train[data.labels == y].mean(0) if bool((data.labels == y).any())
                             else train.mean(0) for y in range(num_classes)])
        mean = means[labels]
        allowed = labels[:, None] == data.labels[None, :]
    idx = nearest(corrupted, train, knn_k, 1 - masks, allowed)[1]
    fills = (("mean_fill", mean), ("nearest_neighbour", train[idx[:, 0]]),
             ("knn_mean_fill", train[idx].mean(1)))
    return {name: torch.where(masks > 0, fill, corrupted) for name, fill in fills}


def _pick(n_available: int, num: int, seed: int) -> Tensor:
    if n_available < num:
        raise UsageError(f"only {n_available} suitable test images, fewer than num={num}")
    return torch.randperm(n_available, generator=torch.Generator().manual_seed(seed))[:num]


def _crossclass_targets(cfg: RestoreConfig, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices of the chosen test images and their target classes."""
    for name, value in (("source", cfg.source), ("target", cfg.target)):
        if value is not None and not 0 <= value < k:
            raise UsageError(f"{name} class {value} out of range: the run has {k} classes "
                             f"(0..{k - 1})")
    if cfg.source is not None and cfg.source == cfg.target:
        raise UsageError("source and target classes must differ")
    ok = torch.ones(len(labels), dtype=torch.bool)
    if cfg.source is not None:
        ok &= labels == cfg.source
    if cfg.target is not None:
        ok &= labels != cfg.target
    candidates = ok.nonzero().squeeze(1)
    chosen = candidates[_pick(len(candidates), cfg.num, cfg.seed)]
    targets = (torch.full((cfg.num,), cfg.target) if cfg.target is not None
               else (labels[chosen] + 1) % k)
    return chosen, targets.long()


def crossclass_scores(originals: Tensor, restored: Tensor, labels: Tensor, targets: Tensor,
                      run: ImageRun, data_root: str | os.PathLike | None,
                      cache_dir: str | os.PathLike | None, progress: bool) -> dict[str, Any]:
    """Target-class fraction by the domain classifier (after and before) and source distance."""
    diff = (restored - originals).flatten(1)
    scores: dict[str, Any] = {"distance_to_source": {
        "mse": float(diff.pow(2).mean()), "l2_mean": float(diff.norm(dim=1).mean())}}
    if run.config.dataset not in DOMAIN_DATASETS:
        scores["classifier"] = (f"none: no domain classifier for {run.config.dataset} "
                                f"(only for {', '.join(DOMAIN_DATASETS)})")
        return scores
    classifier = domain_classifier(run.config, data_root, cache_dir, progress)
    if classifier.config.num_classes != run.model.config.num_classes:
        raise UsageError(f"the domain classifier knows {classifier.config.num_classes} classes, "
                         f"the run {run.model.config.num_classes}; cannot judge the mapping")
    with torch.no_grad():
        after, before = classifier(restored).argmax(1).cpu(), classifier(originals).argmax(1).cpu()
    scores.update(classifier="domain classifier (imagebm.evaluate.domain_classifier)",
                  target_fraction=float((after == targets).float().mean()),
                  target_fraction_of_sources=float((before == targets).float().mean()),
                  source_fraction=float((after == labels).float().mean()),
                  source_accuracy=float((before == labels).float().mean()))
    return scores


def _sampler(run: ImageRun, cfg: RestoreConfig) -> LangevinConfig:
    rc = run.config
    step = cfg.step_size or (REFINE_STEP_SIZE if cfg.blind else rc.sampler.step_size)
    clip = cfg.grad_clip if cfg.grad_clip is not None else rc.eval_grad_clip
    steps = cfg.langevin_steps if cfg.langevin_steps is not None else (
        rc.sampler.steps if rc.contrastive.replay_prob == 0 and not cfg.blind
        else DEFAULT_LANGEVIN_STEPS["blind" if cfg.blind else cfg.task])
    return replace(rc.sampler, steps=steps, step_size=step, step_size_end=None,
                   grad_clip=clip, bounds=(0.0, 1.0))


@dataclass
class _Corrupted:
    """The chosen test images, their labels, the cross-class targets, the chains' starts and
    the masks (1 = a pixel to fill)."""

    originals: Tensor
    labels: Tensor
    targets: Tensor | None
    corrupted: Tensor
    masks: Tensor


def _corrupt(cfg: RestoreConfig, run: ImageRun, masks: Tensor | None,
             data_root: str | os.PathLike | None, generator: torch.Generator) -> _Corrupted:
    """Pick the test images and corrupt them per ``cfg.task`` (noise drawn from
    ``generator``); ``masks`` is the user's inpainting mask, if any."""
    shape = (run.model.config.channels, run.model.config.image_size, run.model.config.image_size)
    box = box_mask(shape, cfg.box) if cfg.task == "inpaint" and masks is None else None
    test = test_split(run.config, data_root)
    targets = None
    if cfg.task == "crossclass":
        chosen, targets = _crossclass_targets(cfg, test.labels, run.model.config.num_classes)
    else:
        chosen = _pick(len(test), cfg.num, cfg.seed)
    originals, labels = test.float(chosen), test.labels[chosen]
    if cfg.task == "inpaint":
        masks = masks if masks is not None else box.expand(cfg.num, *shape).clone()
        noise = chain_init(run.config.init, shape)(cfg.num, None, generator)
        corrupted = torch.where(masks > 0, noise, originals)
    elif cfg.task == "saltpepper":
        corrupted, masks = salt_and_pepper(originals, cfg.fraction, generator)
    else:
        corrupted, masks = originals.clone(), torch.ones_like(originals)
    return _Corrupted(originals, labels, targets, corrupted, masks)


def _energy(model: ImageEBM, cfg: RestoreConfig, c: _Corrupted
            ) -> tuple[EnergyFn, Tensor | None, str]:
    """The energy the chains follow, its condition and its name."""
    if not model.conditional:
        return model, None, "E(x)"
    if cfg.task == "crossclass":
        return model, c.targets, "E(x, target)"
    if cfg.given_label:
        return model, c.labels, "E(x, true label)"
    return free_energy(model), None, "-logsumexp_y -E(x, y)"


def _restored(run: ImageRun, cfg: RestoreConfig, c: _Corrupted, sampler: LangevinConfig,
              generator: torch.Generator, device: torch.device) -> tuple[Tensor, str]:
    """The mean of ``cfg.chains`` chains per image (pixels outside the mask kept bit for bit
    when the mask is known) and the energy's name."""
    model = run.model.to(device)
    energy, cond, name = _energy(model, cfg, c)
    update = None if cfg.task == "crossclass" or cfg.blind else c.masks
    init = chain_init(run.config.init, tuple(c.originals.shape[1:]))
    torch.manual_seed(cfg.seed)
    starts = [c.corrupted] + [  # further chains start from fresh noise where pixels are filled
        torch.where(c.masks > 0, init(cfg.num, None, generator), c.corrupted)
        for _ in range(cfg.chains - 1)]
    with eval_mode([model]):
        restored = torch.stack([
            langevin(energy, start.to(device), None if cond is None else cond.to(device),
                     sampler, mask=None if update is None else update.to(device)).cpu()
            for start in starts]).mean(0)
    if update is not None:  # frozen pixels are returned as given, bit for bit
        restored = torch.where(update > 0, restored, c.corrupted)
    return restored, name


def restore(run: ImageRun | str | os.PathLike, config: RestoreConfig | None = None, *,
            mask: Tensor | np.ndarray | None = None, data_root: str | os.PathLike | None = None,
            cache_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
            progress: bool = True) -> RestoreResult:
    """Corrupt ``config.num`` test images per ``config.task``, restore them, score the result.

    ``mask`` (inpaint only; (H, W), (C, H, W) or (num, C, H, W) of 0/1, 1 = fill) replaces the
    box. Every input is checked before any work: bad ones raise :class:`UsageError`.
    """
    cfg = config or RestoreConfig()
    device = resolve_device(device)
    run = run if isinstance(run, ImageRun) else load_image_run(run, device)
    m = run.model.config
    if mask is not None and (cfg.task != "inpaint" or cfg.box is not None):
        raise UsageError("a user mask applies to the inpaint task only, instead of a box")
    if m.num_classes == 0 and (cfg.task == "crossclass" or cfg.given_label):
        raise UsageError(f"{'crossclass' if cfg.task == 'crossclass' else 'given_label'} needs "
                         f"a class-conditional run; this run's model is unconditional")
    masks = None if mask is None else check_mask(mask, cfg.num,
                                                 (m.channels, m.image_size, m.image_size))
    generator = torch.Generator().manual_seed(cfg.seed)
    c = _corrupt(cfg, run, masks, data_root, generator)
    refs = {} if cfg.task == "crossclass" else reference_fills(  # before the chains: checks k
        c.corrupted, c.masks, c.labels if cfg.given_label else None,
        load_training_data(run.config, data_root), m.num_classes, cfg.knn_k)
    sampler = _sampler(run, cfg)
    restored, energy = _restored(run, cfg, c, sampler, generator, device)
    metrics: dict[str, Any] = {
        "task": cfg.task, "run": str(run.path), "dataset": run.config.dataset, "num": cfg.num,
        "config": asdict(cfg), "sampler": asdict(sampler), "energy": energy,
        "masked_fraction": float(c.masks.mean())}
    if cfg.task == "crossclass":
        metrics.update(crossclass_scores(c.originals, restored, c.labels, c.targets, run,
                                         data_root, cache_dir, progress))
    else:
        metrics["mask_known"] = not cfg.blind
        metrics["scores"] = {name: masked_scores(x, c.originals, c.masks) for name, x in
                             (("ebm", restored), ("corrupted", c.corrupted), *refs.items())}
        if cfg.blind:
            metrics["ebm_unmasked_mse"] = masked_scores(restored, c.originals,
                                                        1 - c.masks)["mse"]
    return RestoreResult(c.originals, c.corrupted, restored, c.masks, c.labels, c.targets,
                         metrics)


def write_restore(out_dir: str | os.PathLike, result: RestoreResult) -> Path:
    """Write the arrays, ``restore.png`` and ``metrics.json`` of ``result`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("originals", "corrupted", "restored", "masks"):
        atomic_save_npy(getattr(result, name).numpy().astype(np.float32), out / f"{name}.npy")
    for name in ("labels", "targets"):
        if getattr(result, name) is not None:
            atomic_save_npy(getattr(result, name).numpy(), out / f"{name}.npy")
    n = min(FIGURE_COLUMNS, len(result.originals))
    rows = [result.originals[:n], result.corrupted[:n], result.restored[:n]]
    save_grid(torch.cat(rows), out / "restore.png", nrow=n)
    write_json(out / "metrics.json", result.metrics)
    return out


def restore_to_folder(run_dir: str | os.PathLike, out_dir: str | os.PathLike,
                      config: RestoreConfig, *, mask_file: str | os.PathLike | None = None,
                      data_root: str | os.PathLike | None = None,
                      device: str | torch.device | None = None,
                      progress: bool = True) -> tuple[Path, RestoreResult]:
    """:func:`restore` (with the ``.npy`` mask ``mask_file``, if given) written to ``out_dir``
    (:func:`write_restore` plus ``run.json``); a run's own folder is refused."""
    out = output_folder(out_dir, config.task)
    mask = None
    if mask_file is not None:
        try:
            mask = np.load(mask_file)
        except (OSError, ValueError) as err:
            raise UsageError(f"{mask_file}: not a readable .npy mask ({type(err).__name__})"
                             ) from None
    result = restore(run_dir, config, mask=mask, data_root=data_root, device=device,
                     progress=progress)
    write_restore(out, result)
    write_run_info(out, config, config.seed, run=str(run_dir), mask=mask_file)
    return out, result
