"""The Shadow-hand envs: gymnasium API, state vector <-> simulator, rollout equivalence."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import trajebm.envs
from trajebm.data.collection import RolloutCollector
from trajebm.envs import ShadowHandEnv, compat, get_state, set_state


def test_registered_envs_pass_check_env():
    for env_id in trajebm.envs.ENV_IDS:
        env = gym.make(env_id)
        check_env(env.unwrapped, skip_render_check=True)
        assert env.observation_space.shape == (31,)
        assert env.action_space.shape == (20,)
        env.close()


def test_velocities_extend_the_state():
    env = gym.make("trajebm/ShadowHandBlock-v0", include_velocities=True)
    state, _ = env.reset(seed=0)
    assert state.shape == (61,) and env.observation_space.shape == (61,)
    assert env.unwrapped.layout.names[31] == "robot0:WRJ1:vel"


def test_compat_fix_is_needed_exactly_on_new_mujoco_and_idempotent():
    from gymnasium_robotics.utils import mujoco_utils

    major, minor = (int(x) for x in mujoco.__version__.split(".")[:2])
    assert compat.enum_comparison_broken() == ((major, minor) >= (3, 12))
    env = ShadowHandEnv()
    assert compat.apply() is False  # applied when the env was built (or not needed)
    env.reset(seed=0)
    obj = mujoco_utils.get_joint_qpos(env.model, env.data, "object:joint")
    hinge = mujoco_utils.get_joint_qpos(env.model, env.data, "robot0:FFJ1")
    assert obj.shape == (7,) and hinge.shape == (1,)
    np.testing.assert_array_equal(obj, env.state_vector()[24:31])


def test_state_vector_round_trip_through_the_simulator():
    a = gym.make("trajebm/ShadowHandBlock-v0")
    a.reset(seed=0)
    for _ in range(3):
        a.step(a.action_space.sample())
    state = get_state(a)
    b = gym.make("trajebm/ShadowHandBlock-v0")
    b.reset(seed=7)
    assert not np.allclose(get_state(b), state)
    set_state(b, state)
    np.testing.assert_allclose(get_state(b), state, atol=1e-12)
    layout = b.unwrapped.layout
    np.testing.assert_allclose(b.unwrapped.data.qpos[layout.qpos_index], state, atol=1e-12)


def test_set_state_with_velocities_resimulates_the_same_future():
    a = ShadowHandEnv(include_velocities=True)
    b = ShadowHandEnv(include_velocities=True)
    a.reset(seed=1)
    b.reset(seed=2)
    rng = np.random.default_rng(0)
    for _ in range(3):
        a.step(rng.uniform(-1, 1, 20))
    b.set_state_vector(a.state_vector())
    for _ in range(5):
        action = rng.uniform(-0.5, 0.5, 20)
        sa, *_ = a.step(action)
        sb, *_ = b.step(action)
    np.testing.assert_allclose(sb[:31], sa[:31], atol=1e-3)


def test_set_state_rejects_bad_vectors():
    env = ShadowHandEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.set_state_vector(np.zeros(30))
    bad = env.state_vector()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        env.set_state_vector(bad)


def test_rollout_collection_equals_stepping_the_gymnasium_env():
    actions = np.random.default_rng(0).uniform(-1, 1, (1, 6, 20)).astype(np.float32)
    with RolloutCollector("trajebm/ShadowHandBlock-v0", include_velocities=True,
                          workers=2) as collector:
        initial, warmstart, goals = collector.reset_states([11])
        states = collector.simulate(initial, warmstart, actions)[0]
        rewards = collector.env.reward(states[1:], goals[0])
    env = gym.make("trajebm/ShadowHandBlock-v0", include_velocities=True)
    first, info = env.reset(seed=11)
    steps = [env.step(a) for a in actions[0]]
    stepped = np.array([first] + [step[0] for step in steps])
    np.testing.assert_allclose(states, stepped, rtol=0, atol=1e-9)
    np.testing.assert_allclose(rewards, [step[1] for step in steps], rtol=0, atol=1e-9)
    np.testing.assert_allclose(goals[0], info["goal"])


def test_rgb_array_renders_offscreen_and_human_mode_is_refused():
    env = gym.make("trajebm/ShadowHandBlock-v0", render_mode="rgb_array", width=64, height=48)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8 and frame.std() > 1
    env.close()
    with pytest.raises(ValueError, match="render_mode"):
        ShadowHandEnv(render_mode="human")


def test_importing_trajebm_and_its_data_cli_does_not_load_mujoco():
    code = (
        "import sys, trajebm, trajebm.data, trajebm.data.cli, trajebm.data.dataset; "
        "assert 'mujoco' not in sys.modules, 'mujoco imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
