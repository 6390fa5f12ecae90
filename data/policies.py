"""Action policies for data collection: open-loop sequences and closed-loop state feedback.

Open-loop policies (random, Ornstein-Uhlenbeck, scripted) map (episode length, generator) to
a (T, 20) array in [-1, 1] of absolute joint-position targets, so whole episodes can be
simulated by ``mujoco.rollout``. Closed-loop policies see the state: the built-in ``pd``
controller (:mod:`trajebm.data.controllers`) or any importable callable named
``"module:function"``, called as ``policy(states (N, D), step) -> actions (N, 20)``. On every
policy, ``random_every=k`` replaces every k-th action by a uniform random one and
``action_noise`` adds Gaussian noise before clipping to [-1, 1]; both are drawn from the
episode's own generator, up front, so episodes do not depend on how they are batched.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from trajebm.engine.errors import UsageError

ACTION_DIM = 20
CLOSED_LOOP_BUILTINS = ("pd",)

StatePolicy = Callable[[np.ndarray, int], Any]


def callable_name(fn: Callable[..., Any]) -> str:
    """The ``"module:qualname"`` reference under which a callable is recorded (and re-imported)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname:
        raise UsageError(f"policy {fn!r} has no module:name to record; use a module-level function")
    return f"{module}:{qualname}"


@dataclass(frozen=True)
class PolicyConfig:
    """A policy and its parameters; ``random_every=k`` makes every k-th action uniform random.

    ``name`` is a built-in (random | ou | scripted | pd), a ``"module:function"`` reference to a
    closed-loop callable, or the callable itself, which is stored as its reference so that the
    config stays JSON-recordable (and must be importable under it). ``action_noise`` is the
    standard deviation of Gaussian noise added to every action before clipping to [-1, 1].
    """

    name: str = "scripted"
    """random | ou | scripted | pd, or module:function, a closed-loop policy(states (N, D),
    step) -> actions (N, 20)."""
    random_every: int = 0
    """Replace every K-th action by a uniform random one (0: never)."""
    ou_theta: float = 0.15
    """Mean reversion per step of the ou policy."""
    ou_sigma: float = 0.3
    """Noise std per step of the ou policy."""
    scripted_hold: tuple[int, int] = (8, 20)
    """Range of steps the scripted policy takes to reach each new target pose."""
    scripted_amplitude: float = 0.9
    """Largest joint target of the scripted policy (actions are in [-1, 1])."""
    action_noise: float = 0.0
    """Add Gaussian noise of this std to every action, then clip to [-1, 1]."""

    def __post_init__(self) -> None:
        if callable(self.name):
            object.__setattr__(self, "name", callable_name(self.name))

    @property
    def closed_loop(self) -> bool:
        """True when the policy sees the state (the pd controller or a module:function)."""
        return self.name in CLOSED_LOOP_BUILTINS or ":" in self.name


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
BUILTIN_POLICIES = (*POLICIES, *CLOSED_LOOP_BUILTINS)


def draw_perturbations(cfg: PolicyConfig, length: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """One episode's random replacements (T, 20; NaN where none) and noise (T, 20, or None).

    Drawn from the episode's generator before the episode runs (replacements, then noise), so
    that closed-loop episodes do not depend on how they are batched.
    """
    replace = np.full((length, ACTION_DIM), np.nan)
    if cfg.random_every > 0:
        k = cfg.random_every
        replace[k - 1 :: k] = rng.uniform(-1.0, 1.0, replace[k - 1 :: k].shape)
    noise = rng.normal(0.0, cfg.action_noise, (length, ACTION_DIM)) if cfg.action_noise > 0 \
        else None
    return replace, noise


def perturb(actions: np.ndarray, replace: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
    """``actions`` with the random replacements and noise applied, clipped to [-1, 1]."""
    actions = np.where(np.isnan(replace), actions, replace)
    if noise is not None:
        actions = actions + noise
    return np.clip(actions, -1.0, 1.0)


def policy_actions(cfg: PolicyConfig, length: int, rng: np.random.Generator) -> np.ndarray:
    """The (length, 20) float32 actions of one episode of open-loop policy ``cfg`` from ``rng``."""
    actions = POLICIES[cfg.name](length, rng, cfg)
    return perturb(actions, *draw_perturbations(cfg, length, rng)).astype(np.float32)


def resolve_policy(name: str) -> StatePolicy:
    """Import the closed-loop callable ``"module:function"``; UsageError if it cannot be used."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UsageError(f"policy {name!r} is not of the form module:function")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as err:  # noqa: BLE001 - any failure to import user code is bad input
        raise UsageError(f"policy {name!r} does not import: {type(err).__name__}: {err}") from None
    if not callable(obj):
        raise UsageError(f"policy {name!r} is {type(obj).__name__}, not a callable")
    return obj


def check_policy(cfg: PolicyConfig) -> None:
    """Raise :class:`UsageError` for an unknown, unimportable or badly parameterised policy."""
    if cfg.closed_loop and cfg.name not in CLOSED_LOOP_BUILTINS:
        resolve_policy(cfg.name)
    elif cfg.name not in BUILTIN_POLICIES:
        raise UsageError(
            f"unknown policy {cfg.name!r}; choose from {', '.join(BUILTIN_POLICIES)} "
            "or give module:function"
        )
    if cfg.random_every < 0:
        raise UsageError(f"random_every must be >= 0, got {cfg.random_every}")
    if not cfg.action_noise >= 0:
        raise UsageError(f"action_noise must be >= 0, got {cfg.action_noise}")


def check_actions(actions: Any, n: int, step: int, name: str) -> np.ndarray:
    """A closed-loop policy's output as an (n, 20) float64 array; UsageError if shape or NaN."""
    try:
        out = np.asarray(actions, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise UsageError(f"policy {name!r} returned non-numeric actions at step {step}: "
                         f"{err}") from None
    if out.shape != (n, ACTION_DIM):
        raise UsageError(f"policy {name!r} returned actions of shape {out.shape} at step {step}; "
                         f"expected ({n}, {ACTION_DIM})")
    if not np.all(np.isfinite(out)):
        raise UsageError(f"policy {name!r} returned NaN or inf actions at step {step}")
    return out
