"""The Shadow-hand envs: gymnasium API, state vector <-> simulator, the simulator API and
its equivalence with stepping the env."""

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
from trajebm.envs import ShadowHandEnv, Simulator, compat, get_state, set_state

ENV = "trajebm/ShadowHandBlock-v0"


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


def test_simulator_steps_set_states_as_the_gymnasium_env_does():
    """Set a state, step it: the same as setting the env (reset with the simulator's seed) to
    that state and stepping it, for every state of a batch, whatever the workers."""
    rng = np.random.default_rng(0)
    env = gym.make(ENV, include_velocities=True).unwrapped
    env.reset(seed=3)
    visited = np.stack([env.step(a)[0] for a in rng.uniform(-1, 1, (4, 20))])
    actions = rng.uniform(-1, 1, (4, 20)).astype(np.float32)
    with Simulator.make(ENV, include_velocities=True, workers=2, seed=0) as sim:
        assert sim.layout.dim == 61 and sim.state_size > 61
        stepped = sim.step(visited, actions)
    for state, action, got in zip(visited, actions, stepped, strict=True):
        env.reset(seed=0)
        env.set_state_vector(state)
        env.data.qacc_warmstart[:] = 0  # the simulator starts each step from rest
        np.testing.assert_allclose(got, env.step(action)[0], rtol=0, atol=1e-9)
    assert not np.allclose(stepped, visited)
    env.close()


def test_simulator_physics_states_hold_the_state_vectors():
    env = ShadowHandEnv()
    env.reset(seed=1)
    vector = env.state_vector()
    with Simulator.make(ENV, seed=0) as sim:
        full = sim.physics_states(np.stack([vector, vector]))
        data = mujoco.MjData(sim.model)
        mujoco.mj_setState(sim.model, data, full[1], mujoco.mjtState.mjSTATE_FULLPHYSICS)
        np.testing.assert_allclose(sim.layout.state_from_qpos_qvel(data.qpos, data.qvel), vector,
                                   atol=1e-12)
        assert not data.qvel.any()  # positions only: the state starts at rest
        with pytest.raises(ValueError, match="shape"):
            sim.physics_states(np.zeros((1, 30)))


def test_simulator_closed_loop_equals_rollout_under_the_same_actions():
    pytest.importorskip("mujoco.batch")
    actions = np.random.default_rng(1).uniform(-1, 1, (3, 5, 20)).astype(np.float32)
    with RolloutCollector(ENV, workers=2) as collector:
        full, warmstart, _ = collector.reset_states([4, 5, 6])
        integration, _ = collector.reset_integration_states([4, 5, 6])
        sim = collector.simulator
        open_loop = sim.rollout(full, warmstart, actions)
        seen = []

        def act(states: np.ndarray, t: int) -> np.ndarray:
            seen.append(states.copy())
            return actions[:, t]

        closed = sim.closed_loop(integration, 5, act)
    np.testing.assert_allclose(closed, open_loop, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.stack(seen, 1), closed[:, :5])


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
        "import sys, trajebm, trajebm.data, trajebm.cli.data, trajebm.data.dataset; "
        "assert 'mujoco' not in sys.modules, 'mujoco imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
