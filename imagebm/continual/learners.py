"""The methods of the continual-learning experiment (:mod:`imagebm.continual`): the
class-conditional EBM and the softmax baselines (fine-tuning, EWC, SI, LwF, joint training)."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imagebm.classify import EnergyClassifier, SoftmaxClassifier, predict
from imagebm.continual.setup import ContinualSetup
from imagebm.models import ImageEBM, build_model
from imagebm.train import chain_init, contrastive_objective, to_unit
from trajebm.engine.buffer import BufferSample, ReplayBuffer
from trajebm.engine.train import Contrastive, LossFn, Objective, Supervised

CLASS_PARAMETERS = ("in_bias", "out_gain")
"""Names that end the EBM's per-class parameters (:class:`~imagebm.models.ModConv`'s rows)."""


class Learner:
    """One method on one seed: learns tasks in order and gives logits over every class.

    ``cumulative`` learners are shown every task's data so far, the others the current task's.
    """

    cumulative = False

    def __init__(self, setup: ContinualSetup) -> None:
        self.setup = setup

    def learn(self, task: int, images: Tensor, labels: Tensor, seed: int, work: Path) -> None:
        """Train on task ``task``'s ``images`` (uint8) and ``labels``; ``work`` is scratch."""
        raise NotImplementedError

    def logits(self, images: Tensor) -> Tensor:
        """Scores (N, classes) of ``images`` in [0, 1], the highest being the prediction."""
        raise NotImplementedError


class EBMLearner(Learner):
    """The class-conditional EBM: per task, CD (+ optional CE) on the current classes, its
    negatives conditioned on the current classes (or every seen class, ``ebm_negatives``),
    all weights trained (or after task 1 the per-class gains and biases only, ``ebm_train``)."""

    def __init__(self, setup: ContinualSetup) -> None:
        super().__init__(setup)
        self.model = build_model(setup.model_config)

    def learn(self, task: int, images: Tensor, labels: Tensor, seed: int, work: Path) -> None:
        cfg, image = self.setup.config, self.setup.image
        classes = self.setup.tasks[task]
        if cfg.ebm_train == "class" and task > 0:
            for name, p in self.model.named_parameters():
                p.requires_grad_(name.endswith(CLASS_PARAMETERS))
        if cfg.ebm_loss == "ce":
            softmax = current_task_cross_entropy(self.model, classes, 1.0,
                                                 image.contrastive.alpha)
            objective: Objective = Supervised(self.model, softmax)
        else:
            aux = None
            if cfg.ebm_loss == "cd+ce":
                aux = current_task_cross_entropy(self.model, classes, cfg.ce_weight)
            objective = self._contrastive(task, tuple(images.shape[1:]), aux, seed)
        self.setup.fit(self.model, objective, images, labels, seed, work)

    def _contrastive(self, task: int, shape: tuple[int, ...], aux: LossFn | None,
                     seed: int) -> Contrastive:
        """The preset's contrastive objective; with ``ebm_negatives="seen"`` its chains are
        conditioned on labels drawn from every class seen so far (a fresh buffer per task)."""
        image = self.setup.image
        if self.setup.config.ebm_negatives == "current":
            return contrastive_objective(self.model, image, shape, True, aux, seed)
        seen = tuple(c for t in self.setup.tasks[:task + 1] for c in t)
        cfg = replace(image.contrastive, negatives_cond="buffer")
        buffer = SeenClassBuffer(seen, cfg.buffer_size, shape, chain_init(image.init, shape),
                                 cond_shape=(), cond_dtype=torch.int64, dtype=torch.uint8,
                                 replay_prob=cfg.replay_prob, seed=seed)
        return Contrastive(self.model, image.sampler, buffer, cfg, aux)

    def logits(self, images: Tensor) -> Tensor:
        return predict(EnergyClassifier(copy.deepcopy(self.model)).eval(), images)


class SeenClassBuffer(ReplayBuffer):
    """A replay buffer whose fresh chains take labels drawn uniformly from ``classes`` (by the
    buffer's own generator) instead of the data batch's; replayed chains keep their own."""

    def __init__(self, classes: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.classes = torch.tensor(classes, dtype=torch.int64)

    def sample(self, n: int, cond: Tensor | None = None) -> BufferSample:
        pick = torch.randint(len(self.classes), (n,), generator=self.generator)
        return super().sample(n, self.classes[pick])


def current_task_cross_entropy(model: ImageEBM, classes: tuple[int, ...], weight: float,
                               alpha: float = 0.0) -> LossFn:
    """``weight`` x cross-entropy of ``-E(x, y)`` over ``classes`` only (the positives' task),
    plus ``alpha`` x the mean squared energy of those pairs (the trainer's L2 term)."""
    table = torch.tensor(classes)

    def loss(x: Tensor, y: Tensor | None) -> Tensor:
        ys = table.to(x.device)
        energies = model.class_energies(x, ys)
        target = (y.unsqueeze(1) == ys).float().argmax(1)
        return weight * F.cross_entropy(-energies, target) + alpha * energies.pow(2).mean()

    return loss


class SoftmaxLearner(Learner):
    """``finetune``: cross-entropy over the classes seen so far on the current task alone."""

    def __init__(self, setup: ContinualSetup) -> None:
        super().__init__(setup)
        self.model = SoftmaxClassifier(setup.model_config, setup.num_classes)
        self.seen = 0

    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def cross_entropy(self, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(self.model(x)[:, :self.seen], y)

    def objective(self, x: Tensor, y: Tensor) -> Tensor:
        """The training loss of a batch (cross-entropy plus the method's regulariser)."""
        return self.cross_entropy(x, y)

    def learn(self, task: int, images: Tensor, labels: Tensor, seed: int, work: Path) -> None:
        self.seen = max(self.setup.tasks[task]) + 1
        objective = Supervised(self.model, lambda x, y: self.objective(x, y))
        self.setup.fit(self.model, objective, images, labels, seed, work)
        self.after_task(images)

    def after_task(self, images: Tensor) -> None:
        """Consolidate what the task taught (importances, anchors, a frozen copy)."""

    def logits(self, images: Tensor) -> Tensor:
        return predict(self.model.eval(), images)


class EWCLearner(SoftmaxLearner):
    """Online EWC: ``lambda/2 sum F (theta - theta*)^2`` with a decayed running Fisher."""

    def __init__(self, setup: ContinualSetup) -> None:
        super().__init__(setup)
        self.fisher: list[Tensor] | None = None
        self.anchor: list[Tensor] = []

    def objective(self, x: Tensor, y: Tensor) -> Tensor:
        loss = self.cross_entropy(x, y)
        if self.fisher is None:
            return loss
        penalty = sum((f * (p - a).pow(2)).sum()
                      for f, p, a in zip(self.fisher, self.params(), self.anchor, strict=True))
        return loss + 0.5 * self.setup.config.ewc_lambda * penalty

    def after_task(self, images: Tensor) -> None:
        cfg, device = self.setup.config, self.setup.device
        params = self.params()
        fisher = [torch.zeros_like(p) for p in params]
        idx = torch.randperm(len(images))[:cfg.fisher_samples]
        self.model.eval()
        for i in idx:
            logits = self.model(to_unit(images[i:i + 1]).to(device))[:, :self.seen]
            loss = F.cross_entropy(logits, logits.argmax(1).detach())
            for f, g in zip(fisher, torch.autograd.grad(loss, params), strict=True):
                f.add_(g.detach().pow(2) / len(idx))
        if self.fisher is not None:
            fisher = [cfg.ewc_gamma * old + new for old, new in zip(self.fisher, fisher,
                                                                    strict=True)]
        self.fisher = fisher
        self.anchor = [p.detach().clone() for p in params]


class SILearner(SoftmaxLearner):
    """Synaptic Intelligence: importance from each parameter's share of the loss's descent."""

    def __init__(self, setup: ContinualSetup) -> None:
        super().__init__(setup)
        self.omega: list[Tensor] | None = None
        self.anchor: list[Tensor] = []
        self._reset_path()

    def _reset_path(self) -> None:
        self.path = [torch.zeros_like(p) for p in self.params()]
        self.start = [p.detach().clone() for p in self.params()]
        self.last: list[Tensor] | None = None
        self.grads: list[Tensor] = []

    def _credit(self) -> None:
        """Add ``-g . delta theta`` of the update since the last batch to the path integral."""
        if self.last is None:
            return
        for w, g, p, before in zip(self.path, self.grads, self.params(), self.last,
                                   strict=True):
            w.sub_(g * (p.detach() - before))

    def objective(self, x: Tensor, y: Tensor) -> Tensor:
        self._credit()
        loss = self.cross_entropy(x, y)
        params = self.params()
        self.grads = [g.detach() for g in torch.autograd.grad(loss, params, retain_graph=True)]
        self.last = [p.detach().clone() for p in params]
        if self.omega is None:
            return loss
        penalty = sum((o * (p - a).pow(2)).sum()
                      for o, p, a in zip(self.omega, params, self.anchor, strict=True))
        return loss + self.setup.config.si_c * penalty

    def after_task(self, images: Tensor) -> None:
        self._credit()
        params, xi = self.params(), self.setup.config.si_xi
        new = [w.clamp_min(0) / ((p.detach() - s).pow(2) + xi)
               for w, p, s in zip(self.path, params, self.start, strict=True)]
        self.omega = new if self.omega is None else [
            o + n for o, n in zip(self.omega, new, strict=True)]
        self.anchor = [p.detach().clone() for p in params]
        self._reset_path()


class LwFLearner(SoftmaxLearner):
    """Learning without Forgetting: distil the previous model's old-class outputs on new data."""

    def __init__(self, setup: ContinualSetup) -> None:
        super().__init__(setup)
        self.teacher: nn.Module | None = None
        self.old = 0

    def objective(self, x: Tensor, y: Tensor) -> Tensor:
        logits = self.model(x)
        loss = F.cross_entropy(logits[:, :self.seen], y)
        if self.teacher is None:
            return loss
        t = self.setup.config.lwf_temperature
        with torch.no_grad():
            target = F.softmax(self.teacher(x)[:, :self.old] / t, dim=1)
        distil = distillation(logits[:, :self.old], target, t)
        return loss + self.setup.config.lwf_alpha * distil

    def after_task(self, images: Tensor) -> None:
        self.teacher = frozen(self.model)
        self.old = self.seen


def frozen(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode without gradients (a teacher kept after a task)."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def distillation(logits: Tensor, target: Tensor, temperature: float) -> Tensor:
    """KL(target || softmax(logits / T)) per image, scaled by T^2 (Hinton et al.); ``target``
    is the teacher's softmax at the same temperature."""
    student = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(student, target, reduction="batchmean") * temperature**2


class JointLearner(SoftmaxLearner):
    """The upper bound: cross-entropy on every task's data seen so far."""

    cumulative = True

