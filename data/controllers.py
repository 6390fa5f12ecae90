"""Closed-loop controllers that need no training, for contact-rich data collection (``pd``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mujoco
import numpy as np

from trajebm.data.policies import PolicyConfig

if TYPE_CHECKING:
    from trajebm.envs import StateLayout

FINGERS = ("FF", "MF", "RF", "LF", "TH")
# Per actuator kind: (low, high) of the per-episode "open" and "closed" targets, in action units
# (-1..1 spans the actuator's control range); flexion closes towards +1.
TARGET_RANGES = {
    "flex": ((-0.8, -0.1), (0.3, 1.0)),
    "thumb": ((-0.7, 0.7), (-0.9, 0.9)),
    "other": ((-0.6, 0.6), (-0.6, 0.6)),
}


def _quat_conj(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw],
                    axis=-1)


def rotation_vector(q: np.ndarray) -> np.ndarray:
    """Axis times angle (radians, in [0, pi]) of unit quaternions ``q`` (..., 4) w,x,y,z."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    q = np.where(q[..., :1] < 0, -q, q)
    sin = np.linalg.norm(q[..., 1:], axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(sin, q[..., :1])
    return q[..., 1:] * np.where(sin > 1e-12, angle / np.maximum(sin, 1e-12), 2.0)


class PDController:
    """Grasp-and-release PD controller whose finger targets follow the object's pose.

    Each finger (first, middle, ring, little, thumb) has a closure c in [0, 1] that cycles
    between releasing and grasping (a cosine with a per-episode period and per-finger phase)
    and is raised by ``k_pos * (d . e_f)``: d is the object's displacement since the episode
    began and e_f the unit direction from the object's start to that fingertip, so a finger
    the block moves towards curls harder around it and one it moves away from lets go. An
    actuator's target is ``open + c * (closed - open)`` plus ``R @ r``, where r is the
    object's rotation vector since the start and R a per-episode 20x3 gain, so wrist,
    abduction and thumb targets shift with the block's orientation. The action is the PD law
    ``target + kp * (target - q) - kd * (q - q_prev)`` in action units (q: the actuator's joint
    position from the state), clipped to [-1, 1]: a blocked finger is pushed past its target,
    which presses it onto the block. Gains, period, phases, open/closed poses, ``k_pos`` and
    R are drawn per episode from its own generator, so the data is diverse and reproducible.
    """

    def __init__(self, model: mujoco.MjModel, layout: StateLayout, cfg: PolicyConfig,
                 rngs: list[np.random.Generator]) -> None:
        self.model, self.layout = model, layout
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, a) for a in range(model.nu)]
        joint_qpos = model.jnt_qposadr[model.actuator_trnid[:, 0]]
        self.columns = np.array([list(layout.qpos_index).index(adr) for adr in joint_qpos])
        low, high = model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1]
        self.center, self.half = (high + low) / 2.0, (high - low) / 2.0
        codes = [name.split(":A_")[-1] for name in names]
        self.finger = np.array([FINGERS.index(c[:2]) if c[:2] in FINGERS else -1 for c in codes])
        kinds = ["thumb" if c[:2] == "TH" else "flex" if c[:2] in FINGERS[:4] and
                 (c[-1] in "12" or c == "LFJ4") else "other" for c in codes]
        open_lo, open_hi, closed_lo, closed_hi = (
            np.array([TARGET_RANGES[k][i][j] for k in kinds]) for i in (0, 1) for j in (0, 1)
        )
        params = [self._draw(rng, open_lo, open_hi, closed_lo, closed_hi) for rng in rngs]
        (self.kp, self.kd, self.period, self.phase, self.open, self.closed, self.k_pos,
         self.rot_gain) = (np.stack(p) for p in zip(*params, strict=True))
        self._tips = [model.body(f"robot0:{f.lower()}distal").id for f in FINGERS]
        self._start: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._previous: np.ndarray | None = None

    def _draw(self, rng: np.random.Generator, open_lo: np.ndarray, open_hi: np.ndarray,
              closed_lo: np.ndarray, closed_hi: np.ndarray) -> tuple[Any, ...]:
        """One episode's gains, period, phases, open and closed poses, k_pos and R."""
        return (rng.uniform(0.5, 2.5), rng.uniform(0.0, 0.6), rng.uniform(12.0, 40.0),
                rng.uniform(0.0, 2 * np.pi, len(FINGERS)), rng.uniform(open_lo, open_hi),
                rng.uniform(closed_lo, closed_hi), rng.uniform(10.0, 40.0),
                rng.normal(0.0, 0.3, (len(open_lo), 3)))

    def _fingertip_directions(self, states: np.ndarray) -> np.ndarray:
        data = mujoco.MjData(self.model)
        out = np.empty((len(states), len(FINGERS), 3))
        pos = self.layout.quat_slice.start - 3
        for i, state in enumerate(states):
            self.layout.write_state(self.model, data, state)
            tips = data.xpos[self._tips] - state[pos : pos + 3]
            out[i] = tips / np.linalg.norm(tips, axis=1, keepdims=True)
        return out

    def __call__(self, states: np.ndarray, step: int) -> np.ndarray:
        """Actions (N, 20) for the states (N, D) of this controller's N episodes at ``step``."""
        pos = self.layout.quat_slice.start - 3
        where, quat = states[:, pos : pos + 3], states[:, self.layout.quat_slice]
        if self._start is None:
            self._start = (where.copy(), quat.copy(), self._fingertip_directions(states))
        start, start_quat, tips = self._start
        wave = 0.5 - 0.5 * np.cos(2 * np.pi * step / self.period[:, None] + self.phase)
        reach = np.einsum("nfk,nk->nf", tips, where - start)
        closure = np.clip(wave + self.k_pos[:, None] * reach, 0.0, 1.0)
        closure = np.concatenate([closure, np.zeros((len(states), 1))], axis=1)[:, self.finger]
        turn = rotation_vector(_quat_mul(quat, _quat_conj(start_quat)))
        target = self.open + closure * (self.closed - self.open)
        target = np.clip(target + np.einsum("nak,nk->na", self.rot_gain, turn), -1.0, 1.0)
        q = (states[:, self.columns] - self.center) / self.half
        velocity = np.zeros_like(q) if self._previous is None else q - self._previous
        self._previous = q
        action = target + self.kp[:, None] * (target - q) - self.kd[:, None] * velocity
        return np.clip(action, -1.0, 1.0)


CONTROLLERS = {"pd": PDController}
