"""Open-loop action sequences for data collection: random, Ornstein-Uhlenbeck and scripted.

Every policy maps (episode length, generator) to a (T, 20) float32 array in [-1, 1] of
absolute joint-position targets, so whole episodes can be simulated by ``mujoco.rollout``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTION_DIM = 20


@dataclass(frozen=True)
class PolicyConfig:
    """A policy and its parameters; ``random_every=k`` makes every k-th action uniform random."""

    name: str = "scripted"
    random_every: int = 0
    ou_theta: float = 0.15
    ou_sigma: float = 0.3
    scripted_hold: tuple[int, int] = (8, 20)
    scripted_amplitude: float = 0.9


def random_actions(length: int, rng: np.random.Generator, cfg: PolicyConfig) -> np.ndarray:
    """Independent uniform actions in [-1, 1]."""
    return rng.uniform(-1.0, 1.0, (length, ACTION_DIM))


def ou_actions(length: int, rng: np.random.Generator, cfg: PolicyConfig) -> np.ndarray:
    """Temporally correlated noise: an Ornstein-Uhlenbeck process around the neutral pose."""
    noise = rng.normal(0.0, cfg.ou_sigma, (length, ACTION_DIM))
    actions = np.empty((length, ACTION_DIM))
    x = np.zeros(ACTION_DIM)
    for t in range(length):
        x = np.clip(x - cfg.ou_theta * x + noise[t], -1.0, 1.0)
        actions[t] = x
    return actions


def scripted_actions(length: int, rng: np.random.Generator, cfg: PolicyConfig) -> np.ndarray:
    """Smooth (cosine-eased) drives of all joints to a new random target pose every few steps."""
    lo, hi = cfg.scripted_hold
    actions = np.empty((length, ACTION_DIM))
    start, t = np.zeros(ACTION_DIM), 0
    while t < length:
        target = rng.uniform(-cfg.scripted_amplitude, cfg.scripted_amplitude, ACTION_DIM)
        hold = int(rng.integers(lo, hi + 1))
        ease = 0.5 - 0.5 * np.cos(np.pi * np.arange(1, hold + 1) / hold)
        segment = start + ease[:, None] * (target - start)
        actions[t : t + hold] = segment[: length - t]
        start, t = target, t + hold
    return actions


POLICIES = {"random": random_actions, "ou": ou_actions, "scripted": scripted_actions}


def policy_actions(cfg: PolicyConfig, length: int, rng: np.random.Generator) -> np.ndarray:
    """The (length, 20) float32 actions of one episode of policy ``cfg`` drawn from ``rng``."""
    actions = POLICIES[cfg.name](length, rng, cfg)
    if cfg.random_every > 0:
        k = cfg.random_every
        actions[k - 1 :: k] = rng.uniform(-1.0, 1.0, actions[k - 1 :: k].shape)
    return actions.astype(np.float32)
