"""Shadow dexterous hand manipulating a block, egg or pen, with a flat, documented state vector.

The physics, reset distribution, control mapping and rendering are gymnasium-robotics'
`HandManipulate*` envs (the OpenAI Gym hand); this env exposes them through a plain
gymnasium API whose observation *is* the state the trajectory models see:

    state = [hand joint positions (24), object position (3), object quaternion w,x,y,z (4)]
            (+ [hand joint velocities (24), object linear + angular velocity (6)] if
            ``include_velocities``)

Actions are the 20 absolute joint-position targets scaled to [-1, 1], exactly as in
gymnasium-robotics; the reward is its dense rotation reward towards a goal orientation
sampled at reset (reported in ``info["goal"]``). Episodes never terminate.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium_robotics.envs.shadow_dexterous_hand.manipulate_block import MujocoHandBlockEnv
from gymnasium_robotics.envs.shadow_dexterous_hand.manipulate_egg import MujocoHandEggEnv
from gymnasium_robotics.envs.shadow_dexterous_hand.manipulate_pen import MujocoHandPenEnv

from trajebm.envs import compat

HAND_CLASSES = {"block": MujocoHandBlockEnv, "egg": MujocoHandEggEnv, "pen": MujocoHandPenEnv}
OBJECT_JOINT = "object:joint"
HAND_JOINT_PREFIX = "robot0:"


@dataclass(frozen=True)
class StateLayout:
    """Where each entry of the state vector lives in MuJoCo's ``qpos`` / ``qvel``."""

    qpos_index: np.ndarray
    qvel_index: np.ndarray
    names: tuple[str, ...]
    quat_slice: slice

    @property
    def dim(self) -> int:
        """State width."""
        return len(self.names)

    @property
    def include_velocities(self) -> bool:
        """Whether the state holds velocities after the positions."""
        return len(self.qvel_index) > 0

    @classmethod
    def from_model(cls, model: mujoco.MjModel, include_velocities: bool = False) -> StateLayout:
        """Hand joints in model order, then the object's free joint (pose, then velocity)."""
        hand = [
            j for j in range(model.njnt)
            if mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j).startswith(HAND_JOINT_PREFIX)
        ]
        hand_names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j) for j in hand]
        obj = compat.joint_slice(model, OBJECT_JOINT)
        obj_vel = compat.joint_slice(model, OBJECT_JOINT, velocity=True)
        qpos_index = np.array(
            [model.jnt_qposadr[j] for j in hand] + list(range(obj.start, obj.stop))
        )
        names = hand_names + [f"object:{c}" for c in ("x", "y", "z", "qw", "qx", "qy", "qz")]
        qvel_index = np.zeros(0, dtype=np.int64)
        if include_velocities:
            qvel_index = np.array(
                [model.jnt_dofadr[j] for j in hand] + list(range(obj_vel.start, obj_vel.stop))
            )
            names += [f"{n}:vel" for n in hand_names]
            names += [f"object:{c}" for c in ("vx", "vy", "vz", "wx", "wy", "wz")]
        quat_start = len(hand) + 3
        return cls(qpos_index, qvel_index, tuple(names), slice(quat_start, quat_start + 4))

    def state_from_qpos_qvel(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """State vectors from (batches of) MuJoCo ``qpos`` and ``qvel`` (last axis)."""
        parts = [qpos[..., self.qpos_index]]
        if self.include_velocities:
            parts.append(qvel[..., self.qvel_index])
        return np.concatenate(parts, axis=-1)

    def write_state(self, model: mujoco.MjModel, data: mujoco.MjData, state: np.ndarray) -> None:
        """Set the simulator to ``state`` (velocities zero unless given), recompute kinematics."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.dim,):
            raise ValueError(f"state has shape {state.shape}, expected ({self.dim},)")
        if not np.all(np.isfinite(state)):
            raise ValueError("state contains NaN or inf")
        npos = len(self.qpos_index)
        qpos = state[:npos].copy()
        quat = qpos[self.quat_slice]
        norm = np.linalg.norm(quat)
        qpos[self.quat_slice] = quat / norm if norm > 0 else (1.0, 0.0, 0.0, 0.0)
        data.qpos[self.qpos_index] = qpos
        data.qvel[:] = 0.0
        if self.include_velocities:
            data.qvel[self.qvel_index] = state[npos:]
        mujoco.mj_forward(model, data)


def control_from_action(model: mujoco.MjModel, actions: np.ndarray) -> np.ndarray:
    """MuJoCo ``ctrl`` for (batches of) actions, mapped as gymnasium-robotics' absolute control."""
    low, high = model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1]
    actions = np.clip(np.asarray(actions, dtype=np.float32), -1.0, 1.0)
    ctrl = (high + low) / 2.0 + actions * ((high - low) / 2.0)
    return np.clip(ctrl, low, high)


class ShadowHandEnv(gym.Env):
    """The Shadow hand with an object on its palm; observations are the state vector."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(
        self,
        object: str = "block",
        include_velocities: bool = False,
        render_mode: str | None = None,
        width: int = 256,
        height: int = 256,
    ) -> None:
        if object not in HAND_CLASSES:
            raise ValueError(f"unknown object {object!r}; choose from {sorted(HAND_CLASSES)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode {render_mode!r} unsupported; use 'rgb_array' or None")
        compat.apply()
        self.object = object
        self.render_mode = render_mode
        self.hand = HAND_CLASSES[object](
            target_position="ignore", target_rotation="xyz", reward_type="dense",
            render_mode=render_mode, width=width, height=height,
        )
        self.layout = StateLayout.from_model(self.hand.model, include_velocities)
        self.n_substeps = self.hand.n_substeps
        self.observation_space = spaces.Box(-np.inf, np.inf, (self.layout.dim,), np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, (20,), np.float32)

    @property
    def model(self) -> mujoco.MjModel:
        """The MuJoCo model of the hand and object."""
        return self.hand.model

    @property
    def data(self) -> mujoco.MjData:
        """The simulator's current state."""
        return self.hand.data

    @property
    def dt(self) -> float:
        """Seconds per env step (``n_substeps`` MuJoCo steps)."""
        return self.hand.dt

    @property
    def goal(self) -> np.ndarray:
        """The goal orientation sampled at reset."""
        return self.hand.goal.copy()

    def state_vector(self) -> np.ndarray:
        """The current state vector (see the module docstring for its layout)."""
        return self.layout.state_from_qpos_qvel(self.data.qpos, self.data.qvel)

    def set_state_vector(self, state: np.ndarray) -> None:
        """Put the simulator into ``state`` so it can be rendered or simulated onwards."""
        self.layout.write_state(self.model, self.data, state)

    def reset(self, *, seed: int | None = None, options: dict | None = None
              ) -> tuple[np.ndarray, dict]:
        """gymnasium's reset: the hand env's reset distribution; returns (state, {goal})."""
        super().reset(seed=seed)
        self.hand.reset(seed=seed)
        self._np_random = self.hand.np_random
        return self.state_vector(), {"goal": self.goal}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """gymnasium's step: one action held for ``n_substeps`` MuJoCo steps."""
        _, reward, _, _, info = self.hand.step(np.asarray(action, dtype=np.float32))
        info = {"is_success": bool(info["is_success"]), "goal": self.goal}
        return self.state_vector(), float(reward), False, False, info

    def reward(self, states: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The env's reward for a batch of state vectors (vectorised, for fast collection)."""
        pose = states[..., self.layout.quat_slice.start - 3 : self.layout.quat_slice.stop]
        return np.asarray(self.hand.compute_reward(pose, np.broadcast_to(goal, pose.shape), None))

    def render(self) -> np.ndarray | None:
        """An RGB frame in ``rgb_array`` mode, else None."""
        return self.hand.render() if self.render_mode == "rgb_array" else None

    def close(self) -> None:
        """Release the renderer and the simulator."""
        self.hand.close()


def get_state(env: gym.Env) -> np.ndarray:
    """The state vector of a (possibly wrapped) :class:`ShadowHandEnv`."""
    return env.unwrapped.state_vector()


def set_state(env: gym.Env, state: np.ndarray) -> None:
    """Set a (possibly wrapped) :class:`ShadowHandEnv` to a given state vector."""
    env.unwrapped.set_state_vector(state)
