"""Compatibility fix for gymnasium-robotics' joint getters on mujoco >= 3.12.

gymnasium-robotics <= 1.4.2 compares ``model.jnt_type[i]`` (a numpy integer) with
``mujoco.mjtJoint`` members; with the pybind11 3 bindings of mujoco >= 3.12 such
comparisons are always False, so every free joint is treated as a hinge and the hand
envs crash on reset. The upstream fix (casting with ``int()``) is merged but unreleased.
:func:`apply` swaps the four joint accessors of ``gymnasium_robotics.utils.mujoco_utils``
for equivalents that cast first. It patches only when the bug is present and only once.
"""

from __future__ import annotations

import mujoco
import numpy as np

_PATCHED_FLAG = "_trajebm_joint_type_fix"
_QPOS_WIDTH = {int(mujoco.mjtJoint.mjJNT_FREE): 7, int(mujoco.mjtJoint.mjJNT_BALL): 4}
_QVEL_WIDTH = {int(mujoco.mjtJoint.mjJNT_FREE): 6, int(mujoco.mjtJoint.mjJNT_BALL): 3}


def enum_comparison_broken() -> bool:
    """True when a numpy joint type no longer equals the matching mujoco enum member."""
    free = mujoco.mjtJoint.mjJNT_FREE
    as_numpy = np.int32(int(free))
    return not (bool(as_numpy == free) and bool(free == as_numpy) and as_numpy in (free,))


def joint_slice(model: mujoco.MjModel, name: str, velocity: bool = False) -> slice:
    """The slice of ``qpos`` (or ``qvel``) that belongs to the joint called ``name``."""
    joint_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
    if joint_id == -1:
        raise ValueError(f"joint {name!r} is not part of the model")
    kind = int(model.jnt_type[joint_id])
    if velocity:
        start, width = int(model.jnt_dofadr[joint_id]), _QVEL_WIDTH.get(kind, 1)
    else:
        start, width = int(model.jnt_qposadr[joint_id]), _QPOS_WIDTH.get(kind, 1)
    return slice(start, start + width)


def _get_joint_qpos(model, data, name):
    return data.qpos[joint_slice(model, name)].copy()


def _get_joint_qvel(model, data, name):
    return data.qvel[joint_slice(model, name, velocity=True)].copy()


def _set_joint_qpos(model, data, name, value):
    where = joint_slice(model, name)
    data.qpos[where] = np.asarray(value, dtype=np.float64).reshape(where.stop - where.start)


def _set_joint_qvel(model, data, name, value):
    where = joint_slice(model, name, velocity=True)
    data.qvel[where] = np.asarray(value, dtype=np.float64).reshape(where.stop - where.start)


def apply() -> bool:
    """Patch gymnasium-robotics' joint accessors if this mujoco needs it; True if patched now."""
    from gymnasium_robotics.utils import mujoco_utils

    if getattr(mujoco_utils, _PATCHED_FLAG, False) or not enum_comparison_broken():
        return False
    mujoco_utils.get_joint_qpos = _get_joint_qpos
    mujoco_utils.get_joint_qvel = _get_joint_qvel
    mujoco_utils.set_joint_qpos = _set_joint_qpos
    mujoco_utils.set_joint_qvel = _set_joint_qvel
    setattr(mujoco_utils, _PATCHED_FLAG, True)
    return True
