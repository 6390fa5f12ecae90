"""Hidden physics for collection: per-episode model factors and actuation noise.

Real robot data is not deterministic: the object's mass, friction and size vary and are not
observed, and actuators do not do exactly what they are told. A collection reproduces that with

* ``randomize``: multiplicative factors on the model's own values (:data:`PARAMETERS`), each
  drawn per episode **log-uniformly** in its range ``[low, high]`` (so ``0.5:2`` is symmetric
  about 1: halving is as likely as doubling), and applied to a copy of the env's ``MjModel``
  that only that episode runs on (:func:`randomized_model`);
* ``actuation_noise``: the executed action is the recorded (commanded) one plus hidden
  N(0, sigma^2) noise per step and actuator, in action units, clipped to [-1, 1] (the control
  range).

Both are drawn from the episode's own stream of the collection seed (:func:`hidden_generator`),
so they do not depend on sharding, chunking or workers, and drawing them leaves the episode's
resets and actions as in a collection without them. The factors are recorded per episode (the
episode group's ``physics.NAME`` attributes) and the ranges in the metadata; the state vector
never holds them. Episodes start from the env's nominal reset state.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trajebm.data.policies import ACTION_DIM
from trajebm.engine.errors import UsageError

PARAMETERS = {
    "object_mass": "the object body's mass and rotational inertia",
    "object_friction": "the object's geom friction (sliding, torsional, rolling), which its "
                       "contacts then use",
    "object_size": "the object's geom sizes (its mass and inertia unchanged)",
    "actuator_gain": "the position actuators' stiffness kp (gainprm[0] and biasprm[1] "
                     "together, so each still tracks its target)",
    "joint_damping": "the hand joints' damping",
}
"""The parameters ``randomize`` may scale, and what each factor multiplies."""
DISTRIBUTION = "log-uniform"
OBJECT_BODY = "object"
HAND_JOINT_PREFIX = "robot0:"
HIDDEN_STREAM = 2
"""The episode's seed-sequence key for hidden physics (0 and 1 are its reset and actions)."""


@dataclass(frozen=True)
class FactorRange:
    """A hidden parameter and the range of its per-episode multiplicative factor."""

    name: str
    """One of :data:`PARAMETERS`."""
    low: float
    """Smallest factor (> 0)."""
    high: float
    """Largest factor (> low)."""


def describe_parameters() -> str:
    """The parameter names and what each scales, for ``--help``."""
    return "; ".join(f"{name}: {what}" for name, what in PARAMETERS.items())


def parse_randomize(text: str) -> tuple[FactorRange, ...]:
    """``"NAME=LO:HI,..."`` as checked factor ranges in :data:`PARAMETERS` order."""
    ranges = []
    for item in text.split(","):
        name, eq, bounds = item.partition("=")
        low, colon, high = bounds.partition(":")
        if not eq or not colon:
            raise UsageError(f"--randomize takes NAME=LO:HI,... (e.g. object_mass=0.5:2), "
                             f"got {item!r}")
        try:
            ranges.append(FactorRange(name.strip(), float(low), float(high)))
        except ValueError:
            raise UsageError(f"--randomize: {item!r} has a bound that is not a number") from None
    check_ranges(ranges)
    return tuple(sorted(ranges, key=lambda r: list(PARAMETERS).index(r.name)))


def check_ranges(ranges: Sequence[FactorRange]) -> None:
    """Raise :class:`UsageError` for an unknown or repeated name, or a range that is not
    ``0 < low < high`` (finite)."""
    seen = set()
    for r in ranges:
        if r.name not in PARAMETERS:
            raise UsageError(f"unknown randomize parameter {r.name!r}; choose from "
                             f"{', '.join(PARAMETERS)}")
        if r.name in seen:
            raise UsageError(f"randomize parameter {r.name!r} is given twice")
        seen.add(r.name)
        if not (math.isfinite(r.low) and math.isfinite(r.high)) or r.low <= 0 or r.high <= 0:
            raise UsageError(f"{r.name}: factors must be positive and finite, got "
                             f"{r.low:g}:{r.high:g}")
        if r.high < r.low:
            raise UsageError(f"{r.name}: range {r.low:g}:{r.high:g} is inverted")
        if r.high == r.low:
            raise UsageError(f"{r.name}: range {r.low:g}:{r.high:g} is empty")


def check_actuation_noise(sigma: float) -> None:
    """Raise :class:`UsageError` unless ``sigma`` is finite and >= 0."""
    if not (math.isfinite(sigma) and sigma >= 0):
        raise UsageError(f"actuation_noise must be >= 0, got {sigma}")


def hidden_generator(seed: int, episode: int) -> np.random.Generator:
    """The generator of episode ``episode``'s hidden physics in a collection seeded ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(episode, HIDDEN_STREAM)))


def draw_hidden(ranges: Sequence[FactorRange], sigma: float, length: int, seed: int,
                episode: int) -> tuple[dict[str, float], np.ndarray | None]:
    """One episode's factors ``{name: factor}`` and actuation noise (T, 20), or None.

    One uniform is drawn for every parameter of :data:`PARAMETERS`, so a factor does not
    depend on which others are randomised, and the noise does not depend on the ranges.
    """
    rng = hidden_generator(seed, episode)
    uniform = dict(zip(PARAMETERS, rng.random(len(PARAMETERS)), strict=True))
    factors = {r.name: math.exp(math.log(r.low) + uniform[r.name] * math.log(r.high / r.low))
               for r in ranges}
    noise = rng.normal(0.0, sigma, (length, ACTION_DIM)) if sigma > 0 else None
    return factors, noise


def actuate(actions: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
    """The executed actions: ``actions`` plus the actuation ``noise`` (same shape), clipped
    to [-1, 1]; ``actions`` themselves when there is none."""
    if noise is None:
        return actions
    return np.clip(actions + noise, -1.0, 1.0)


def _object_geoms(model: Any) -> tuple[np.ndarray, int]:
    """The object's geom ids and its body id."""
    import mujoco

    body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, OBJECT_BODY)
    return np.flatnonzero(model.geom_bodyid == body), body


def _hand_dofs(model: Any) -> np.ndarray:
    """The degrees of freedom of the hand's joints."""
    import mujoco

    return np.array([model.jnt_dofadr[j] for j in range(model.njnt)
                     if mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j)
                     .startswith(HAND_JOINT_PREFIX)])


def randomized_model(model: Any, factors: Mapping[str, float]) -> Any:
    """A copy of the Shadow-hand ``MjModel`` with ``factors`` applied (``model`` unchanged).

    ``object_mass`` scales the object body's mass and inertia; ``object_friction`` its
    geoms' friction, and gives them a higher contact priority, so that contacts with the
    object use its friction (by default a contact takes the larger of its two geoms', which
    would hide every factor below 1); ``object_size`` its geoms' sizes with their bounding
    sphere and box (primitive geoms), not its mass or inertia; ``actuator_gain`` the
    actuators' gain ``gainprm[0]`` and, for the affine-bias (position) actuators, ``biasprm[1]``
    (= -kp), so the force ``kp (ctrl - q)`` becomes ``f kp (ctrl - q)``: the same target, a
    stiffer or softer servo (force ranges and ``biasprm[2]`` unchanged); ``joint_damping``
    the damping of the hand joints' degrees of freedom. The derived constants (subtree
    masses, inverse weights) are recomputed with ``mj_setConst``.
    """
    import mujoco

    out = copy.copy(model)
    geoms, body = _object_geoms(out)
    f = factors.get("object_mass", 1.0)
    out.body_mass[body] *= f
    out.body_inertia[body] *= f
    if "object_friction" in factors:
        out.geom_friction[geoms] *= factors["object_friction"]
        out.geom_priority[geoms] = out.geom_priority.max() + 1
    f = factors.get("object_size", 1.0)
    for name in ("geom_size", "geom_rbound", "geom_aabb"):
        getattr(out, name)[geoms] *= f
    f = factors.get("actuator_gain", 1.0)
    out.actuator_gainprm[:, 0] *= f
    affine = out.actuator_biastype == mujoco.mjtBias.mjBIAS_AFFINE
    out.actuator_biasprm[affine, 1] *= f
    out.dof_damping[_hand_dofs(out)] *= factors.get("joint_damping", 1.0)
    mujoco.mj_setConst(out, mujoco.MjData(out))
    return out


def hidden_metadata(ranges: Sequence[FactorRange], sigma: float) -> dict[str, Any]:
    """The metadata entry that records a collection's hidden physics."""
    return {"distribution": DISTRIBUTION,
            "randomize": {r.name: [r.low, r.high] for r in ranges},
            "actuation_noise": sigma,
            "episode_attribute": "physics.NAME"}
