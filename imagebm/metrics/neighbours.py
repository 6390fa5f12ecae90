"""Nearest-neighbour search of image sets (memorisation checks, reference fills)."""

from __future__ import annotations

import torch
from torch import Tensor


def nearest(queries: Tensor, keys: Tensor, k: int = 1, visible: Tensor | None = None,
            allowed: Tensor | None = None, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Euclidean distances and indices (each (N, k), nearest first) of the ``k`` nearest
    ``keys`` rows of each query row, searched ``chunk`` keys at a time in float64.

    ``visible`` (0/1, the queries' shape) measures each query on its visible elements only
    (restoring from what is left of an image); ``allowed`` (N, M) bool restricts the candidates
    (e.g. to the query's class; a query with fewer than ``k`` gets inf distances).
    """
    q = queries.flatten(1).double()
    v = torch.ones_like(q) if visible is None else visible.flatten(1).double()
    qv = q * v
    q_norm = (qv * q).sum(1, keepdim=True)
    dists, idx = [], []
    for start in range(0, len(keys), chunk):
        x = keys[start:start + chunk].flatten(1).double()
        d = (q_norm - 2 * qv @ x.T + v @ (x * x).T).clamp_min(0)
        if allowed is not None:
            d = d.masked_fill(~allowed[:, start:start + chunk], float("inf"))
        value, i = d.topk(min(k, d.shape[1]), dim=1, largest=False)
        dists.append(value)
        idx.append(i + start)
    d, i = torch.cat(dists, 1), torch.cat(idx, 1)
    order = d.argsort(dim=1, stable=True)[:, :k]
    return d.gather(1, order).sqrt(), i.gather(1, order)
