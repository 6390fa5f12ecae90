"""The optimiser's pieces: Adam with the paper's gradient clip, the lr schedule, an EMA."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trajebm.engine.train.config import TrainConfig


@torch.no_grad()
def clip_to_adam_bound(optimizer: torch.optim.Adam) -> None:
    """Clip each gradient element to ±(3·sqrt(v̂) + 0.1), v̂ being Adam's corrected 2nd moment.

    Uses multi-tensor (``torch._foreach_*``) ops: a handful of kernels for all parameters
    instead of several per parameter, which dominates for small models and on a GPU.
    """
    for group in optimizer.param_groups:
        beta2 = group["betas"][1]
        fresh, grads, second, corrections = [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state.get(p)
            if not state:
                fresh.append(p.grad)
                continue
            grads.append(p.grad)
            second.append(state["exp_avg_sq"])
            corrections.append(1 - beta2 ** float(state["step"]))
        if fresh:
            torch._foreach_clamp_min_(fresh, -0.1)
            torch._foreach_clamp_max_(fresh, 0.1)
        if grads:
            bound = torch._foreach_div(second, corrections)
            torch._foreach_sqrt_(bound)
            torch._foreach_mul_(bound, 3.0)
            torch._foreach_add_(bound, 0.1)
            torch._foreach_maximum_(grads, torch._foreach_neg(bound))
            torch._foreach_minimum_(grads, bound)


def lr_factor(config: TrainConfig, step: int) -> float:
    """Learning-rate multiplier: linear warm-up, then optionally a cosine decay to zero."""
    factor = min(1.0, (step + 1) / max(config.warmup_steps, 1))
    if config.cosine_decay and step >= config.warmup_steps:
        progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def weights(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the model's state_dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class EMA:
    """An exponential moving average of a model's weights (its buffers copied as they are)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model, self.decay = model, decay
        self.params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        self.average = weights(model)

    @torch.no_grad()
    def update(self) -> None:
        for k, v in self.model.state_dict().items():
            avg = self.average[k]
            if k in self.params and avg.is_floating_point():
                avg.mul_(self.decay).add_(v, alpha=1.0 - self.decay)
            else:
                avg.copy_(v)

    def load(self, saved: dict[str, Tensor] | None, device: torch.device) -> None:
        """Restore a saved average (None: start it from the current weights)."""
        self.average = weights(self.model) if saved is None else {
            k: v.to(device).clone() for k, v in saved.items()}
