"""Generative replay (``genreplay``) for the continual-learning experiment
(:mod:`imagebm.continual`): deep generative replay (Shin et al. 2017) as in van de Ven et al.'s
class-incremental benchmarks, the paper's "generative replay (VAE)" row.

Per task, two models learn, each through the engine's :class:`~trajebm.engine.train.Trainer`
with the run's batch size and learning rate:

* a fully connected VAE (two hidden layers of ``vae_hidden`` units, a Gaussian latent of
  ``vae_latent`` dimensions, Bernoulli pixels; ``vae_steps`` steps) on the current task's images
  and, after the first task, as many images sampled from the frozen copy of the VAE kept at the
  end of the previous task;
* the softmax baseline's backbone (``steps`` steps, cross-entropy over the classes seen so far)
  on the current task's images and, after the first task, as many images sampled from that same
  previous VAE copy, labelled by the frozen copy of the previous classifier: ``hard`` targets
  are its most likely class among the classes seen before the task (cross-entropy over every
  class seen so far), ``soft`` its softmax over those classes, distilled at temperature
  :data:`SOFT_TEMPERATURE` (scaled by T^2).

Both losses weigh the current data by ``1/k`` and the replay by ``1 - 1/k`` at the k-th task
(van de Ven et al.), so each task seen so far counts alike. Replayed images are the decoder's
pixel means, fresh for every batch (the global torch RNG, which the trainer seeds per task:
a seed reproduces a run). Every step sees twice the images of the other baselines' steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imagebm.continual.learners import SoftmaxLearner, distillation, frozen
from imagebm.continual.setup import ContinualSetup
from trajebm.engine.train import Supervised

SOFT_TEMPERATURE = 2.0
"""Distillation temperature of ``replay_targets="soft"`` (van de Ven et al.'s)."""
LARGE_IMAGE_PIXELS = 28 * 28
"""Images with at least this many pixels get the larger default VAE (400 hidden, latent 32)."""


def vae_size(setup: ContinualSetup) -> tuple[int, int]:
    """The VAE's hidden units and latent size: the config's, else by the images' pixel count
    (400 and 32 for 28x28 MNIST, 128 and 16 for 8x8 digits)."""
    cfg = setup.config
    large = setup.train_images[0].numel() >= LARGE_IMAGE_PIXELS
    hidden = cfg.vae_hidden or (400 if large else 128)
    latent = cfg.vae_latent or (32 if large else 16)
    return hidden, latent


class VAE(nn.Module):
    """A fully connected VAE: images (B, C, H, W) in [0, 1] <-> a Gaussian latent."""

    def __init__(self, shape: tuple[int, ...], hidden: int, latent: int) -> None:
        super().__init__()
        self.shape, self.latent = tuple(shape), latent
        pixels = math.prod(self.shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, pixels))

    def loss(self, x: Tensor) -> Tensor:
        """The negative ELBO per pixel (Bernoulli likelihood, standard normal prior)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        logits = self.decoder(z)
        recon = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="sum")
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
        return (recon + kl) / x.numel()

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` images (the decoder's pixel means) from the prior, by the global torch RNG."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent, device=device)
        return torch.sigmoid(self.decoder(z)).view(n, *self.shape)


class GenerativeReplayLearner(SoftmaxLearner):
    """``genreplay``: the softmax backbone trained on the task's data plus images replayed from
    the previous task's VAE copy, labelled by the previous classifier's copy (module doc)."""

    def __init__(self, setup: ContinualSetup) -> None:
        super().__init__(setup)
        hidden, latent = vae_size(setup)
        self.vae = VAE(tuple(setup.train_images.shape[1:]), hidden, latent)
        self.old_vae: VAE | None = None
        self.teacher: nn.Module | None = None
        self.old = 0
        self.tasks_seen = 0

    @property
    def replay_weight(self) -> float:
        """Weight of the replayed batch's loss: ``1 - 1/k`` at the k-th task (0 at the first)."""
        return 1.0 - 1.0 / self.tasks_seen

    def learn(self, task: int, images: Tensor, labels: Tensor, seed: int, work: Path) -> None:
        self.tasks_seen += 1
        cfg = self.setup.config
        objective = Supervised(self.vae, lambda x, y: self.vae_objective(x))
        vae_work = work / "vae"
        vae_work.mkdir(parents=True, exist_ok=True)
        self.setup.fit(self.vae, objective, images, labels, seed, vae_work,
                       steps=cfg.vae_steps or cfg.steps)
        super().learn(task, images, labels, seed, work)

    def vae_objective(self, x: Tensor) -> Tensor:
        """The VAE's loss on the current batch, plus on as many images from the old VAE."""
        loss = self.vae.loss(x)
        if self.old_vae is None:
            return loss
        replayed = self.old_vae.to(x.device).sample(len(x))
        w = self.replay_weight
        return (1.0 - w) * loss + w * self.vae.loss(replayed)

    def replay(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``n`` images from the previous VAE copy and the previous classifier's targets: class
        ids (hard) or probabilities over the ``old`` classes at :data:`SOFT_TEMPERATURE`."""
        assert self.old_vae is not None and self.teacher is not None
        x = self.old_vae.to(device).sample(n)
        with torch.no_grad():
            logits = self.teacher.to(device)(x)[:, :self.old]
        if self.setup.config.replay_targets == "hard":
            return x, logits.argmax(1)
        return x, F.softmax(logits / SOFT_TEMPERATURE, dim=1)

    def objective(self, x: Tensor, y: Tensor) -> Tensor:
        loss = self.cross_entropy(x, y)
        if self.teacher is None:
            return loss
        replayed, target = self.replay(len(x), x.device)
        logits = self.model(replayed)
        if target.dtype == torch.int64:
            replay_loss = F.cross_entropy(logits[:, :self.seen], target)
        else:
            replay_loss = distillation(logits[:, :self.old], target, SOFT_TEMPERATURE)
        w = self.replay_weight
        return (1.0 - w) * loss + w * replay_loss

    def after_task(self, images: Tensor) -> None:
        self.teacher = frozen(self.model)
        self.old_vae = frozen(self.vae)
        self.old = self.seen
