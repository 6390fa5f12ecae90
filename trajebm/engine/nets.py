"""The one multilayer perceptron of the project (trajectory models, their heads, toy energies).

``MLP(inputs, outputs, hidden, layers)`` is ``layers`` hidden layers of width ``hidden``, each a
linear map (optionally spectrally normalised) and an activation, then a linear output layer.
:meth:`MLP.partial` fixes a leading part of the input once — what a Langevin chain whose
condition never changes can compute once instead of at every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "lrelu": lambda: nn.LeakyReLU(0.2), "silu": nn.SiLU}
"""Hidden-layer activations by name: leaky ReLU (slope 0.2, the paper's) or SiLU (smooth)."""


class MLP(nn.Sequential):
    """``layers`` x (linear, activation), then a linear layer to ``outputs``."""

    def __init__(self, inputs: int, outputs: int, hidden: int, layers: int,
                 spectral: bool = False, activation: str = "lrelu") -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, "
                             f"got {activation!r}")
        widths = [inputs] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            linear = nn.Linear(a, b)
            blocks += [nn.utils.parametrizations.spectral_norm(linear) if spectral else linear,
                       ACTIVATIONS[activation]()]
        super().__init__(*blocks, nn.Linear(hidden, outputs))

    @torch.no_grad()
    def partial(self, prefix: Tensor, shift: Tensor | None = None
                ) -> tuple[Callable[[Tensor, Tensor], Tensor], Tensor]:
        """``(f, h)`` with ``f(x, h) == self(cat([prefix, x - shift], 1))`` for a fixed prefix.

        ``h = W_prefix prefix + b - W_x shift`` is the first layer's share of everything but
        ``x``, computed here once; ``f`` multiplies only ``x``'s columns and runs the rest of
        the net. The gradient of ``f`` is exact in ``x`` but does not reach the first layer's
        weights: it is for sampling, not training.
        """
        first, rest = self[0], list(self)[1:]
        width = prefix.shape[1]
        weight = first.weight
        w_x = weight[:, width:]
        hidden = torch.addmm(first.bias, prefix, weight[:, :width].t())
        if shift is not None:
            hidden = hidden - shift @ w_x.t()

        def f(x: Tensor, h: Tensor) -> Tensor:
            h = torch.addmm(h, x, w_x.t())
            for layer in rest:
                h = layer(h)
            return h

        return f, hidden
