"""Closed-loop collection: equals the gymnasium env, reproducible, pd controller, bad policies."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
from test_collect import run_cli

from trajebm.data.collection import CollectConfig, check_config, collect
from trajebm.data.policies import PolicyConfig, policy_actions
from trajebm.engine.errors import UsageError

PD = CollectConfig(episodes=3, length=6, policy=PolicyConfig("pd"), seed=5, chunk_episodes=2)


def tanh_feedback(states: np.ndarray, step: int) -> np.ndarray:
    """A deterministic closed-loop policy of the joint angles (used by name by these tests)."""
    return np.tanh(3.0 * states[:, :20] - 1.0 + 0.1 * step)


def wrong_shape(states: np.ndarray, step: int) -> np.ndarray:
    """Returns one action too few per episode."""
    return np.zeros((len(states), 19))


def raises_at_step_one(states: np.ndarray, step: int) -> np.ndarray:
    """A policy with a bug: it fails at its second call."""
    if step >= 1:
        raise ZeroDivisionError("division by zero")
    return np.zeros((len(states), 20))


def nan_after_two_steps(states: np.ndarray, step: int) -> np.ndarray:
    """Returns NaN actions from step 2 on."""
    return np.full((len(states), 20), np.nan if step >= 2 else 0.0)


NOT_CALLABLE = 3


def episodes(path: Path) -> list[tuple[np.ndarray, np.ndarray, int]]:
    with h5py.File(path / "data" / "main_data.hdf5", "r") as f:
        return [(f[g]["observations"][()], f[g]["actions"][()], int(f[g].attrs["seed"]))
                for g in f]


def test_closed_loop_equals_stepping_the_gymnasium_env(tmp_path):
    """Actions recorded by a state-feedback run replay to the same states in the env."""
    cfg = replace(PD, policy=PolicyConfig(tanh_feedback, random_every=3, action_noise=0.2),
                  include_velocities=True, episodes=2)
    collect(cfg, tmp_path / "ds", workers=2, progress=False)
    env = gym.make("trajebm/ShadowHandBlock-v0", include_velocities=True)
    for observations, actions, seed in episodes(tmp_path / "ds"):
        first, _ = env.reset(seed=seed)
        stepped = np.array([first] + [env.step(a)[0] for a in actions])
        np.testing.assert_allclose(observations, stepped, rtol=0, atol=1e-9)
        assert np.abs(actions).max() <= 1.0
    plain = replace(cfg, policy=PolicyConfig(tanh_feedback), include_velocities=False)
    collect(plain, tmp_path / "plain", workers=1, progress=False)
    for observations, actions, _ in episodes(tmp_path / "plain"):
        seen = tanh_feedback(observations[:-1], np.arange(len(actions))[:, None])
        np.testing.assert_allclose(actions, seen.astype(np.float32), rtol=0, atol=1e-6)


def test_closed_loop_is_reproducible_whatever_the_workers_and_chunks(tmp_path):
    collect(PD, tmp_path / "a", workers=1, progress=False)
    collect(replace(PD, chunk_episodes=3), tmp_path / "b", workers=2, progress=False)
    main = "data/main_data.hdf5"
    assert (tmp_path / "a" / main).read_bytes() == (tmp_path / "b" / main).read_bytes()
    meta = json.loads((tmp_path / "a/data/metadata.json").read_text())["trajebm"]
    assert meta["policy"]["name"] == "pd" and "closed loop" in meta["simulator"]


def test_callable_is_recorded_as_module_function_and_usable_by_name(tmp_path, capsys):
    name = "test_collect_closed_loop:tanh_feedback"
    assert PolicyConfig(tanh_feedback).name == name
    cfg = replace(PD, policy=PolicyConfig(tanh_feedback, action_noise=0.1), episodes=2)
    collect(cfg, tmp_path / "api", workers=2, progress=False)
    meta = json.loads((tmp_path / "api/data/metadata.json").read_text())
    assert meta["trajebm"]["policy"]["name"] == name
    assert meta["trajebm"]["collection"]["config"]["policy"]["name"] == name
    argv = ["collect", "--episodes", "2", "--length", str(PD.length), "--seed", str(PD.seed),
            "--chunk", str(PD.chunk_episodes), "--policy", name, "--action-noise", "0.1",
            "--out", str(tmp_path / "cli"), "--quiet"]
    assert run_cli(argv, capsys)[0] == 0
    main = "data/main_data.hdf5"
    assert (tmp_path / "cli" / main).read_bytes() == (tmp_path / "api" / main).read_bytes()


def test_action_noise_is_seeded_clipped_and_applies_to_open_loop_policies():
    rng = np.random.default_rng
    base = policy_actions(PolicyConfig("scripted"), 50, rng(0))
    noisy = policy_actions(PolicyConfig("scripted", action_noise=0.3), 50, rng(0))
    again = policy_actions(PolicyConfig("scripted", action_noise=0.3), 50, rng(0))
    np.testing.assert_array_equal(noisy, again)
    assert np.abs(noisy).max() <= 1.0 and 0.1 < np.std(noisy - base) < 0.4


def test_pd_controller_gives_diverse_contact_rich_episodes(tmp_path):
    cfg = replace(PD, episodes=4, length=25, chunk_episodes=4)
    collect(cfg, tmp_path / "pd", workers=2, progress=False)
    obs = np.stack([o for o, _, _ in episodes(tmp_path / "pd")])
    actions = np.stack([a for _, a, _ in episodes(tmp_path / "pd")])
    assert obs[:, :, :24].std(axis=(0, 1)).mean() > 0.05  # the hand moves
    assert obs[:, -1, :24].std(axis=0).mean() > 0.05  # episodes end in different poses
    assert np.median(np.ptp(obs[:, :, 24:31], axis=1).max(axis=1)) > 2e-3  # the block moves
    assert np.mean(np.abs(actions) >= 1.0) < 0.5  # not bang-bang


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("no_such_module_xyz:act", "does not import"),
        ("test_collect_closed_loop:missing", "does not import"),
        ("test_collect_closed_loop:NOT_CALLABLE", "not a callable"),
        ("test_collect_closed_loop:wrong_shape", "shape (2, 19)"),
        ("test_collect_closed_loop:nan_after_two_steps", "NaN"),
        ("test_collect_closed_loop:raises_at_step_one", "raised ZeroDivisionError at step 1"),
    ],
)
def test_bad_policies_exit_2_and_write_nothing(policy, message, tmp_path, capsys):
    argv = ["collect", "--episodes", "2", "--length", "3", "--policy", policy,
            "--out", str(tmp_path / "x"), "--quiet"]
    status, err = run_cli(argv, capsys)
    assert status == 2
    assert err.startswith("trajebm: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_bad_action_noise_is_refused(tmp_path, capsys):
    argv = ["collect", "--episodes", "2", "--action-noise", "-1", "--out", str(tmp_path / "x")]
    status, err = run_cli(argv, capsys)
    assert status == 2 and "action_noise" in err and not (tmp_path / "x").exists()
    with pytest.raises(UsageError, match="does not import"):
        check_config(replace(PD, policy=PolicyConfig(lambda states, step: states)))
