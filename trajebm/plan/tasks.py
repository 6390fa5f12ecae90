"""Goal-directed tasks on the Shadow hand's block, judged on the states MuJoCo produces.

A task draws one goal per episode from the episode's start state and a seeded generator, and
gives two views of it: a differentiable **cost** on (predicted) states, in units of the task's
tolerance (1 = at the success threshold), which every planner minimises; and a **success**
check on true states. Every task fails when the object is dropped (more than 3 cm below its
start height at any step).

* ``rotate``: turn the block about the world's vertical axis by ±[0.3, 0.8] rad; success when
  the angle between the final and the target orientation is ≤ 0.1 rad;
* ``pose``: rotate it about a random axis by 0.3–0.6 rad (gymnasium-robotics' "xyz" targets,
  smaller angles); the same criterion;
* ``move``: translate it 1.5 cm on the palm in a random horizontal direction; within 5 mm;
* ``lift``: raise it 2 cm above its start height; within 5 mm at the end (a sanity task).

Goals are stored as the target quaternion (w, x, y, z) for ``rotate``/``pose``, the target
(x, y) for ``move`` and the target height for ``lift``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

DROP = 0.03
"""The object counts as dropped more than this far (m) below its start height."""
POSITION = slice(24, 27)
"""Where the object's position sits in the state vector (after the 24 hand joints)."""
QUATERNION = slice(27, 31)
"""Where the object's orientation (w, x, y, z) sits in the state vector."""


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of quaternions (w, x, y, z) along the last axis."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], -1)


def axis_angle(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Quaternions of rotations by ``angle`` about unit ``axis`` (broadcast)."""
    half = np.asarray(angle)[..., None] / 2.0
    return np.concatenate([np.cos(half), np.sin(half) * axis], -1)


def rotation_angle(q: Tensor | np.ndarray, target: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """The angle (rad) of the rotation between orientations ``q`` and ``target`` (w, x, y, z;
    need not be normalised): 2 atan2(|v|, |w|) of q_target^-1 q, sign-invariant, smooth."""
    if isinstance(q, Tensor):
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        target = torch.as_tensor(target, dtype=q.dtype, device=q.device)
        dot = (q * target).sum(-1).abs()
        cross = (1.0 - dot.pow(2)).clamp_min(0.0) + 1e-12
        return 2.0 * torch.atan2(cross.sqrt(), dot)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-8)
    dot = np.abs((q * target).sum(-1))
    return 2.0 * np.arctan2(np.sqrt(np.clip(1.0 - dot**2, 0.0, None)), dot)


@dataclass(frozen=True)
class Task:
    """One task: how goals are drawn, what the error is, and its success tolerance."""

    name: str
    tolerance: float
    """Success threshold of the final error (rad for rotations, m for positions)."""

    def goals(self, start: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One goal per start state (E, D) -> (E, G)."""
        raise NotImplementedError

    def error(self, states: Tensor | np.ndarray, goal: Tensor | np.ndarray
              ) -> Tensor | np.ndarray:
        """The distance of states (..., D) to their goals (..., G), in the task's units."""
        raise NotImplementedError

    def cost(self, states: Tensor, goal: Tensor, start_height: Tensor,
             drop_weight: float = 100.0) -> Tensor:
        """Differentiable cost of state trajectories (N, H, D) with goals (N, G): the mean
        error over the steps in tolerances, plus ``drop_weight`` per step below the drop
        height (softened linearly over the last centimetre)."""
        err = self.error(states, goal[:, None]) / self.tolerance
        z = states[..., POSITION.stop - 1]
        floor = (start_height - DROP)[:, None]
        dropped = ((floor + 0.01 - z) / 0.01).clamp(0.0, 1.0)
        return err.mean(1) + drop_weight * dropped.mean(1)

    def dropped(self, states: np.ndarray) -> np.ndarray:
        """Whether each trajectory (E, T+1, D) drops the object at any step."""
        z = states[..., POSITION.stop - 1]
        return (z < z[:, :1] - DROP).any(1)

    def final_error(self, states: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The error of each trajectory's last state (E,)."""
        return np.asarray(self.error(states[:, -1], goal))

    def success(self, states: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Final error within tolerance and the object never dropped, per trajectory."""
        return (self.final_error(states, goal) <= self.tolerance) & ~self.dropped(states)


@dataclass(frozen=True)
class Rotate(Task):
    """Orientation goals: a rotation by [low, high] rad about the world's vertical axis (either
    sense) or about a random axis."""

    low: float = 0.3
    high: float = 0.8
    vertical: bool = True

    def goals(self, start: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(start)
        angle = rng.uniform(self.low, self.high, n)
        if self.vertical:
            angle *= rng.choice([-1.0, 1.0], n)
            axis = np.tile([0.0, 0.0, 1.0], (n, 1))
        else:
            axis = rng.standard_normal((n, 3))
            axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        q0 = start[:, QUATERNION] / np.linalg.norm(start[:, QUATERNION], axis=1, keepdims=True)
        return quat_mul(axis_angle(axis, angle), q0)

    def error(self, states, goal):
        return rotation_angle(states[..., QUATERNION], goal)


@dataclass(frozen=True)
class Move(Task):
    """A horizontal translation of the object by ``distance`` (m) in a random direction."""

    distance: float = 0.015

    def goals(self, start: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        phi = rng.uniform(0.0, 2 * np.pi, len(start))
        return start[:, POSITION.start : POSITION.start + 2] + self.distance * np.stack(
            [np.cos(phi), np.sin(phi)], 1)

    def error(self, states, goal):
        xy = states[..., POSITION.start : POSITION.start + 2] - goal
        if isinstance(xy, Tensor):
            return (xy.pow(2).sum(-1) + 1e-12).sqrt()
        return np.linalg.norm(xy, axis=-1)


@dataclass(frozen=True)
class Lift(Task):
    """Raise the object by ``height`` (m) above where it starts."""

    height: float = 0.02

    def goals(self, start: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return start[:, POSITION.stop - 1 : POSITION.stop] + self.height

    def error(self, states, goal):
        gap = states[..., POSITION.stop - 1] - goal[..., 0]
        if isinstance(gap, Tensor):
            return (gap.pow(2) + 1e-12).sqrt()
        return np.abs(gap)


TASKS: dict[str, Task] = {
    "rotate": Rotate("rotate", 0.1, low=0.3, high=0.8, vertical=True),
    "pose": Rotate("pose", 0.1, low=0.3, high=0.6, vertical=False),
    "move": Move("move", 0.005),
    "lift": Lift("lift", 0.005),
}
"""The tasks by name (module docstring)."""
