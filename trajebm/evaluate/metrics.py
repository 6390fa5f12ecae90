"""The scores of predicted rollouts, as pure maths on arrays (no files, no simulator).

Per predicted step t: the Fréchet distance between Gaussians fitted to predicted and true
states (z-scored with the training statistics, so joint angles and object pose weigh alike),
for the whole state and for the hand's joint positions and the object's pose alone. Every
model is scored with the same number of points per FD — one per test start — and FDs are
averaged over the samples drawn from each start: a deterministic model's identical copies are
not extra samples. The train-vs-test FD at the same number of trajectories is the floor; FD is
biased upward when there are few starts against the state dimension
(:data:`MIN_STARTS_PER_DIM`). Also the MSE to the true trajectory (mean over samples) and the
spread (std across the samples of one start, averaged over dims) that measures diversity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trajebm.engine.metrics import frechet_distance_samples

MIN_STARTS_PER_DIM = 10
"""Test starts per state dimension below which an FD is reported as biased."""
OBJECT_POSE = ("x", "y", "z", "qw", "qx", "qy", "qz")


def dimension_groups(names: Sequence[str]) -> dict[str, np.ndarray]:
    """Dimensions scored separately: the whole state, hand joint positions, object pose."""
    hand = [i for i, n in enumerate(names) if n.startswith("robot0:") and ":vel" not in n]
    obj = [i for i, n in enumerate(names) if n in {f"object:{c}" for c in OBJECT_POSE}]
    groups = {"state": np.arange(len(names))}
    if hand:
        groups["hand"] = np.array(hand)
    if obj:
        groups["object"] = np.array(obj)
    return groups


def fd_per_step(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """FD at each step between predicted (n, S, H, D) and true (n, H, D) states: one point per
    start in each FD, averaged over the S samples."""
    s, h = pred.shape[1], pred.shape[2]
    return np.array([np.mean([frechet_distance_samples(pred[:, j, t], truth[:, t])
                              for j in range(s)]) for t in range(h)])


def floor_per_step(train: np.ndarray, test: np.ndarray, seed: int = 0) -> np.ndarray:
    """Train-vs-test FD per step at the test split's size (the floor at the same n)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(train), size=min(len(test), len(train)), replace=False)
    return np.array([frechet_distance_samples(train[pick, t], test[:, t])
                     for t in range(test.shape[1])])


def floor_groups(train: np.ndarray, test: np.ndarray, groups: dict[str, np.ndarray],
                 seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`floor_per_step` of each dimension group of z-scored (n, H, D) trajectories."""
    return {g: floor_per_step(train[..., dims], test[..., dims], seed)
            for g, dims in groups.items()}


def prediction_scores(pred: np.ndarray, truth: np.ndarray, groups: dict[str, np.ndarray]
                      ) -> dict[str, Any]:
    """FD per step and group, MSE (per step and per start) and spread of z-scored predictions
    (n, S, H, D) against the true (n, H, D), as lists (what a report stores)."""
    horizon = pred.shape[2]
    fd = {g: fd_per_step(pred[..., dims], truth[..., dims]).tolist()
          for g, dims in groups.items()}
    mse = np.mean((pred - truth[:, None]) ** 2, axis=(1, 3))
    spread = pred.std(1).mean((0, 2)) if pred.shape[1] > 1 else np.zeros(horizon)
    return {"fd": fd["state"], "fd_groups": fd, "mse": mse.mean(0).tolist(),
            "mse_per_start": mse.mean(1).tolist(), "spread": spread.tolist(),
            "samples": pred.shape[1]}


def fd_size_warning(starts: int, dims: int) -> str | None:
    """Why FDs from ``starts`` points in ``dims`` dimensions are unreliable (None if they are
    not)."""
    if starts >= MIN_STARTS_PER_DIM * dims:
        return None
    return (f"only {starts} test trajectories for FD in {dims} dimensions (want >= "
            f"{MIN_STARTS_PER_DIM * dims}): FDs are biased upward and noisy; compare models "
            f"with each other at the same n, not with the paper or other datasets")


def physics_triplets(ctx_last: np.ndarray, pred: np.ndarray, actions: np.ndarray,
                     every: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s_t, a_t, s_{t+1}) of rollouts (n, H, D) that start after ``ctx_last`` (n, D), every
    ``every``-th step: what a physics check re-simulates."""
    prev = np.concatenate([ctx_last[:, None], pred[:, :-1]], 1)
    idx = np.arange(0, pred.shape[1], every)
    return prev[:, idx], actions[:, idx], pred[:, idx]
