"""Shadow-hand gymnasium environments, registered under the `trajebm/` namespace.

Importing this package selects headless EGL rendering (unless ``MUJOCO_GL`` is set; it must
be chosen before MuJoCo loads its GL backend) and registers ``trajebm/ShadowHandBlock-v0``,
``trajebm/ShadowHandEgg-v0`` and ``trajebm/ShadowHandPen-v0``. :class:`Simulator` steps batches of
their states outside gymnasium (:mod:`trajebm.envs.simulator`). The mujoco >= 3.12 fix for
gymnasium-robotics (:mod:`trajebm.envs.compat`) is applied when an env is built, not on import.
"""

import contextlib
import io
import os

os.environ.setdefault("MUJOCO_GL", "egl")

# gymnasium-robotics (loaded as a gymnasium plugin) prints a notice about its Adroit envs on
# import; it does not concern the Shadow-hand envs and would break our one-line error
# messages, so it is swallowed here.
with contextlib.redirect_stderr(io.StringIO()):
    import gymnasium as gym
    import gymnasium_robotics  # noqa: F401
from trajebm.envs.shadow_hand import (  # noqa: E402
    HAND_CLASSES,
    ShadowHandEnv,
    StateLayout,
    control_from_action,
    get_state,
    set_state,
)
from trajebm.envs.simulator import Simulator  # noqa: E402

ENV_IDS = {f"trajebm/ShadowHand{name.capitalize()}-v0": name for name in HAND_CLASSES}
MAX_EPISODE_STEPS = 100

for _env_id, _object in ENV_IDS.items():
    if _env_id not in gym.registry:
        gym.register(
            id=_env_id,
            entry_point="trajebm.envs.shadow_hand:ShadowHandEnv",
            kwargs={"object": _object},
            max_episode_steps=MAX_EPISODE_STEPS,
        )

__all__ = [
    "ENV_IDS",
    "MAX_EPISODE_STEPS",
    "ShadowHandEnv",
    "Simulator",
    "StateLayout",
    "control_from_action",
    "get_state",
    "set_state",
]
