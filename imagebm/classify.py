"""A class-conditional image EBM used as a classifier, and the softmax reference it is judged by.

:func:`load_classifier` turns a conditional run into a plain :class:`torch.nn.Module` mapping
images (N, C, H, W) in [0, 1] to logits ``-E(x, y)`` for every class y, so any attack or
evaluation code uses it unchanged (argmax of the logits = argmin of the energy). With
``langevin_steps > 0`` each class hypothesis first refines its own copy of the input by
Langevin dynamics on ``E(., y)`` (the paper's defence, docs/paper.md §3); the chain is kept in the
autograd graph, so gradients of the logits reach the input *through* the refinement, and
``samples`` chains are averaged.

The reference is a softmax classifier with the run's backbone (same architecture, width,
spectral norm; one unconditional trunk with a K-way linear head) trained by cross-entropy on
the run's training data for the run's number of steps, batch size and learning rate
(:func:`train_reference`). ``imagebm classify --run RUN`` trains it once into ``RUN/softmax``
and prints both test accuracies.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from imagebm.datasets import ImageData, dataset_spec, load_dataset
from imagebm.models import ImageEBM, ImageEBMConfig, build_model
from imagebm.presets import ImageTrainConfig
from imagebm.train import ImageRun, load_image_run, load_training_data
from trajebm.engine.device import resolve_device
from trajebm.engine.errors import UsageError
from trajebm.engine.modelfile import load_model_file, save_model_file
from trajebm.engine.runinfo import write_json, write_run_info
from trajebm.engine.sampling import LangevinConfig, langevin

REFERENCE_DIR = "softmax"
REFERENCE_FORMAT = "imagebm-softmax-classifier"
REFINE_STEP_SIZE = 1.0
"""Default Langevin step of the refinement (the run's noise and clip are kept)."""


def refine_sampler(run_cfg: ImageTrainConfig, steps: int,
                   step_size: float | None = None) -> LangevinConfig:
    """The refinement chain: the run's training sampler with ``steps`` steps, bounded to [0, 1].

    The step is :data:`REFINE_STEP_SIZE` unless given: the training step (10 for the paper's
    presets) with its gradient clip moves each pixel up to 0.1 per step, which erases a digit
    in ten steps rather than cleaning it.
    """
    return replace(run_cfg.sampler, steps=steps, bounds=(0.0, 1.0),
                   step_size=REFINE_STEP_SIZE if step_size is None else step_size,
                   step_size_end=None)


class EnergyClassifier(nn.Module):
    """Logits ``-E(x, y)`` of a class-conditional EBM for every class y, optionally refined.

    ``forward`` is differentiable in ``x`` (also through the refinement chains, whose own
    gradients are taken with respect to the images only). The wrapped model keeps its mode:
    :func:`load_classifier` returns one in eval mode. Under ``torch.no_grad`` the chains still
    run (they need gradients of the energy) but nothing is kept for a backward pass.
    """

    def __init__(self, model: ImageEBM, langevin_steps: int = 0, samples: int = 1,
                 sampler: LangevinConfig | None = None) -> None:
        super().__init__()
        if not model.conditional:
            raise UsageError("classification needs a class-conditional run (its model has no "
                             "labels); train one with a conditional preset such as digits")
        if langevin_steps < 0 or samples < 1:
            raise UsageError(f"need langevin_steps >= 0 and samples >= 1, got "
                             f"{langevin_steps} and {samples}")
        self.model = model
        self.num_classes = model.config.num_classes
        self.langevin_steps = langevin_steps
        self.samples = samples
        default = LangevinConfig(step_size=REFINE_STEP_SIZE, bounds=(0.0, 1.0))
        self.sampler = replace(sampler or default,
                               steps=langevin_steps)

    def forward(self, x: Tensor) -> Tensor:
        if self.langevin_steps == 0:
            return -self.model.class_energies(x)
        n, k = x.shape[0], self.num_classes
        xs, ys = self.model.class_pairs(x)
        keep = torch.is_grad_enabled()
        total = torch.zeros(n, k, device=x.device, dtype=x.dtype)
        for _ in range(self.samples):
            refined = langevin(self.model, xs, ys, self.sampler, differentiable=keep)
            with torch.set_grad_enabled(keep):
                total = total + self.model(refined, ys).view(n, k)
        return -total / self.samples


class SoftmaxClassifier(nn.Module):
    """The reference: an EBM backbone (unconditional) whose head gives K logits."""

    def __init__(self, config: ImageEBMConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise UsageError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.config = replace(config, num_classes=0)
        self.num_classes = num_classes
        self.body = build_model(self.config)
        self.body.head = nn.Linear(self.body.head.in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def load_classifier(run_dir: str | os.PathLike | ImageRun, langevin_steps: int = 0,
                    samples: int = 1, device: str | torch.device = "cpu",
                    step_size: float | None = None) -> EnergyClassifier:
    """The run's conditional EBM as an :class:`EnergyClassifier` (eval mode, on ``device``)."""
    run = run_dir if isinstance(run_dir, ImageRun) else load_image_run(run_dir, device)
    sampler = refine_sampler(run.config, langevin_steps, step_size)
    return EnergyClassifier(run.model.to(device), langevin_steps, samples, sampler).eval()


def test_split(cfg: ImageTrainConfig, data_root: str | os.PathLike | None = None,
               labelled: bool = True) -> ImageData:
    """The run's held-out split, labelled unless ``labelled`` is False (the one the run's
    classifiers, restorations and likelihoods are scored on)."""
    if "test" not in dataset_spec(cfg.dataset).splits:
        raise UsageError(f"{cfg.dataset} has no test split to score")
    data = load_dataset(cfg.dataset, data_root, "test", image_size=cfg.image_size,
                        seed=cfg.train.seed, label_factor=cfg.label_factor,
                        factor_bins=cfg.factor_bins)
    if labelled and data.labels is None:
        raise UsageError(f"{cfg.dataset} test images have no labels (set label_factor)")
    return data


@torch.no_grad()
def predict(classifier: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Logits (N, K) of ``images`` in [0, 1], in batches, on the classifier's device."""
    device = next(classifier.parameters()).device
    out = [classifier(images[i:i + batch_size].to(device)).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def accuracy(classifier: nn.Module, images: Tensor, labels: Tensor,
             batch_size: int = 256) -> float:
    """Fraction of ``images`` whose highest logit is the label."""
    return float((predict(classifier, images, batch_size).argmax(1) == labels).float().mean())


@dataclass
class ReferenceConfig:
    """How the softmax reference trains: defaults are the EBM run's steps, batch, lr and seed."""

    steps: int
    """Training steps."""
    batch_size: int
    """Images per step."""
    lr: float
    """Adam's learning rate."""
    seed: int
    """Seeds the weights and the batches."""


def reference_config(cfg: ImageTrainConfig, **overrides: Any) -> ReferenceConfig:
    """The reference's training settings for the EBM run ``cfg`` (same budget, same data)."""
    base = ReferenceConfig(cfg.train.steps, cfg.batch_size, cfg.train.lr, cfg.train.seed)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def train_reference(run: ImageRun | str | os.PathLike, out_dir: str | os.PathLike | None = None,
                    data_root: str | os.PathLike | None = None,
                    config: ReferenceConfig | None = None, device: str | torch.device = "cpu",
                    progress: bool = True) -> SoftmaxClassifier:
    """Train the softmax reference of a run on labelled data; save it to ``out_dir``.

    ``out_dir`` defaults to RUN/softmax. The run itself may be unconditional (an OOD baseline
    for ``-E(x)``), as long as its training data have labels.
    """
    run = run if isinstance(run, ImageRun) else load_image_run(run)
    cfg = run.config
    rcfg = config or reference_config(cfg)
    data = load_training_data(cfg, data_root)
    if data.labels is None:
        raise UsageError(f"{cfg.dataset} has no labels to train a softmax reference on")
    device = resolve_device(device)
    torch.manual_seed(rcfg.seed)
    model = SoftmaxClassifier(run.model.config, data.num_classes).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=rcfg.lr)
    gen = torch.Generator().manual_seed(rcfg.seed)
    t0 = time.perf_counter()
    for _ in tqdm(range(rcfg.steps), desc="softmax reference", disable=not progress):
        idx = torch.randint(len(data), (rcfg.batch_size,), generator=gen)
        loss = F.cross_entropy(model(data.float(idx).to(device)), data.labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.cpu().eval()
    out = Path(out_dir) if out_dir is not None else run.path / REFERENCE_DIR
    out.mkdir(parents=True, exist_ok=True)
    write_run_info(out, rcfg, rcfg.seed, ebm_run=str(run.path))
    save_model_file(out / "model.pt", REFERENCE_FORMAT, rcfg, model.state_dict(),
                    model_config=model.config, num_classes=data.num_classes,
                    train_seconds=round(time.perf_counter() - t0, 1))
    return model


def load_reference(path: str | os.PathLike, device: str | torch.device = "cpu"
                   ) -> SoftmaxClassifier:
    """A softmax reference saved by :func:`train_reference` (its folder or model file)."""
    path = Path(path)
    file = path / "model.pt" if path.is_dir() else path
    record = load_model_file(file, REFERENCE_FORMAT, "softmax reference classifier")
    model = SoftmaxClassifier(ImageEBMConfig(**record["model_config"]),
                              int(record["num_classes"]))
    try:
        model.load_state_dict(record["state_dict"])
    except RuntimeError as err:
        raise UsageError(f"{file}: weights do not fit ({str(err).splitlines()[0]})") from None
    return model.to(device).eval()


def reference_for(run: ImageRun, reference: str | os.PathLike | None = None,
                  data_root: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  progress: bool = True) -> SoftmaxClassifier:
    """The run's softmax reference: ``reference`` if given, else RUN/softmax, trained if absent."""
    path = Path(reference) if reference is not None else run.path / REFERENCE_DIR
    if reference is None and not (path / "model.pt").exists():
        if progress:
            print(f"training the softmax reference once into {path}")
        train_reference(run, path, data_root, device=device, progress=progress)
    return load_reference(path, device)


@dataclass
class ClassifyConfig:
    """What ``imagebm classify`` scores: refinement lengths and chains averaged."""

    langevin_steps: tuple[int, ...] = (0,)
    """Refinement lengths to score (0 = plain argmin energy)."""
    samples: int = 1
    """Refinement chains averaged."""

    def __post_init__(self) -> None:
        self.langevin_steps = tuple(self.langevin_steps)
        if not self.langevin_steps or min(self.langevin_steps) < 0 or self.samples < 1:
            raise UsageError("--langevin-steps must be >= 0 and --samples >= 1")


def classify_report(run_dir: str | os.PathLike, langevin_steps: tuple[int, ...] = (0,),
                    samples: int = 1, reference: str | os.PathLike | None = None,
                    data_root: str | os.PathLike | None = None, device: str = "cpu",
                    progress: bool = True, out: str | os.PathLike | None = None
                    ) -> dict[str, Any]:
    """Test accuracy of the EBM classifier (per refinement length) and of its reference;
    also written to the JSON file ``out`` when given."""
    cfg = ClassifyConfig(langevin_steps, samples)
    run = load_image_run(run_dir, device)
    data = test_split(run.config, data_root)
    x, y = data.float(), data.labels
    ebm = {str(k): accuracy(load_classifier(run, k, cfg.samples, device), x, y)
           for k in cfg.langevin_steps}
    softmax = accuracy(reference_for(run, reference, data_root, device, progress), x, y)
    report = {"run": str(run.path), "dataset": data.name, "test_images": len(data),
              "ebm_accuracy": ebm, "softmax_accuracy": softmax, "samples": cfg.samples,
              "refine_sampler": asdict(refine_sampler(run.config, max(cfg.langevin_steps)))}
    if out:
        write_json(Path(out), report)
    return report
