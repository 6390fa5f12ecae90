"""Hidden physics in collection: per-episode model factors (--randomize) and actuation noise."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_collect import run_cli, run_data_cli

from trajebm.data import storage
from trajebm.data.collection import CollectConfig, RolloutCollector, collect, episode_seeds
from trajebm.data.dataset import dataset_info
from trajebm.data.metadata import read_info
from trajebm.data.policies import PolicyConfig
from trajebm.data.randomize import (
    PARAMETERS,
    actuate,
    draw_hidden,
    parse_randomize,
    randomized_model,
)
from trajebm.engine.errors import UsageError

SPEC = ("object_mass=0.5:2,object_friction=0.5:1.5,object_size=0.9:1.1,actuator_gain=0.8:1.2,"
        "joint_damping=0.5:2")
CFG = CollectConfig(episodes=4, length=5, policy=PolicyConfig("scripted"), seed=1,
                    chunk_episodes=2, randomize=parse_randomize(SPEC), actuation_noise=0.05)
SETTINGS = ["--episodes", "4", "--length", "4", "--policy", "pd", "--seed", "2", "--chunk", "2",
            "--randomize", SPEC, "--actuation-noise", "0.05", "--quiet"]
LEGACY = Path(__file__).parent / "fixtures" / "legacy" / "hand"


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """CFG collected once."""
    out = tmp_path_factory.mktemp("hidden") / "whole"
    collect(CFG, out, workers=2, progress=False)
    return out


def main_bytes(path: Path) -> bytes:
    return (path / "data" / storage.MAIN_FILE).read_bytes()


def test_randomised_collection_is_reproducible(whole, tmp_path):
    again = tmp_path / "again"
    collect(replace(CFG, chunk_episodes=3), again, workers=1, progress=False)
    assert main_bytes(again) == main_bytes(whole)


def test_factors_are_recorded_per_episode_in_range_and_not_in_the_state(whole, capsys):
    episodes = storage.read_episodes(whole / "data" / storage.MAIN_FILE)
    ranges = {r.name: (r.low, r.high) for r in CFG.randomize}
    for ep in episodes:
        assert ep.physics.keys() == PARAMETERS.keys()
        assert all(ranges[k][0] <= v <= ranges[k][1] for k, v in ep.physics.items())
        assert ep.observations.shape == (CFG.length + 1, 31)
        assert ep.physics == draw_hidden(CFG.randomize, 0.0, CFG.length, CFG.seed, ep.id)[0]
    masses = [ep.physics["object_mass"] for ep in episodes]
    assert len(set(masses)) == len(masses)
    _, info = read_info(whole)
    assert info.randomize == ranges and info.actuation_noise == 0.05
    assert info.document["trajebm"]["hidden_physics"]["distribution"] == "log-uniform"
    assert run_data_cli(["dataset", "info", str(whole)]) == 0
    out = capsys.readouterr().out
    assert "object_mass x0.5..2" in out and "actuation noise sigma=0.05" in out


def test_randomised_shards_merge_into_the_unsharded_dataset(tmp_path, capsys):
    whole = tmp_path / "whole"
    assert run_cli(["collect", *SETTINGS, "--out", str(whole)], capsys)[0] == 0
    for i in range(2):
        argv = ["collect", *SETTINGS, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}")]
        assert run_cli(argv, capsys)[0] == 0
    argv = ["dataset", "merge", str(tmp_path / "s1"), str(tmp_path / "s0"),
            "--out", str(tmp_path / "merged")]
    assert run_cli(argv, capsys)[0] == 0
    assert main_bytes(tmp_path / "merged") == main_bytes(whole)
    metas = [json.loads((p / "data" / storage.METADATA_FILE).read_text())
             for p in (whole, tmp_path / "merged")]
    for meta in metas:
        meta["trajebm"].pop("git_commit")
        meta.pop("dataset_id")
    assert metas[0] == metas[1]


def simulate(collector, initial, warmstart, actions, factors=None) -> np.ndarray:
    models = None if factors is None else [randomized_model(collector.model, factors)] * len(
        initial)
    return collector.simulate(initial, warmstart, actions, models)


def test_factors_change_the_physics_as_they_should():
    """Same resets and actions, 30 steps of the neutral action: a heavier object sinks deeper
    into the palm, weaker servos let the hand (and the object on it) sag, a larger object sits
    higher; all factors 1 is the nominal model exactly."""
    with RolloutCollector(CFG.env_id) as collector:
        initial, warmstart, _ = collector.reset_states(
            [episode_seeds(0, i)[0] for i in range(3)])
        actions = np.zeros((3, 30, 20))
        nominal = simulate(collector, initial, warmstart, actions)
        unit = simulate(collector, initial, warmstart, actions, dict.fromkeys(PARAMETERS, 1.0))
        np.testing.assert_array_equal(unit, nominal)
        z = {(name, f): simulate(collector, initial, warmstart, actions, {name: f})[:, -1, 26]
             for name in ("object_mass", "actuator_gain", "object_size") for f in (0.5, 2.0)}
    height = nominal[:, -1, 26]
    assert np.all(z["object_mass", 2.0] < height) and np.all(height < z["object_mass", 0.5])
    assert np.all(z["actuator_gain", 0.5] < height) and np.all(height < z["actuator_gain", 2.0])
    assert np.all(z["object_size", 0.5] < height) and np.all(height < z["object_size", 2.0])


def test_randomized_model_leaves_the_env_model_alone():
    with RolloutCollector(CFG.env_id) as collector:
        model = collector.model
        mass, gain = model.body_mass.copy(), model.actuator_gainprm.copy()
        other = randomized_model(model, {"object_mass": 2.0, "actuator_gain": 0.5})
        np.testing.assert_array_equal(model.body_mass, mass)
        np.testing.assert_array_equal(model.actuator_gainprm, gain)
        assert other.body_mass.sum() > mass.sum()
        np.testing.assert_array_equal(other.actuator_gainprm[:, 0], 0.5 * gain[:, 0])
        np.testing.assert_array_equal(other.actuator_biasprm[:, 1], -other.actuator_gainprm[:, 0])


@pytest.mark.parametrize("policy", ["scripted", "pd"])
def test_actuation_noise_changes_states_but_not_recorded_actions(policy, tmp_path):
    nominal = replace(CFG, randomize=(), actuation_noise=0.0, policy=PolicyConfig(policy),
                      episodes=2, length=4)
    noisy = replace(nominal, actuation_noise=0.1)
    a, b = (storage.read_episodes(collect(cfg, tmp_path / name, progress=False)
                                  / storage.MAIN_FILE)
            for name, cfg in (("nominal", nominal), ("noisy", noisy)))
    for x, y in zip(a, b, strict=True):
        assert x.physics == y.physics == {}
        np.testing.assert_array_equal(x.observations[0], y.observations[0])
        assert not np.allclose(x.observations[1:], y.observations[1:])
        if policy == "scripted":  # open loop: the commanded actions are the same
            np.testing.assert_array_equal(x.actions, y.actions)
        else:  # closed loop: the first action is, later ones see other states
            np.testing.assert_array_equal(x.actions[0], y.actions[0])


def test_actuation_is_clipped_to_the_control_range():
    actions = np.array([[0.95, -0.95, 0.0]])
    noise = np.array([[0.1, -0.1, 0.2]])
    np.testing.assert_allclose(actuate(actions, noise), [[1.0, -1.0, 0.2]])
    assert actuate(actions, None) is actions


def test_nominal_collections_record_what_they_did_before(tmp_path):
    out = collect(replace(CFG, randomize=(), actuation_noise=0.0, episodes=1, length=2),
                  tmp_path / "nominal", progress=False)
    own = json.loads((out / storage.METADATA_FILE).read_text())["trajebm"]
    assert "hidden_physics" not in own
    assert not {"randomize", "actuation_noise"} & own["collection"]["config"].keys()


def test_a_legacy_dataset_loads_without_hidden_physics(tmp_path):
    hand = tmp_path / "hand"
    shutil.copytree(LEGACY, hand)  # its read cache is built beside it
    _, info = read_info(hand)
    assert info.randomize is None and info.actuation_noise is None
    assert dataset_info(hand)["randomize"] == {}
    assert all(ep.physics == {} for ep in storage.read_episodes(hand / "data" / storage.MAIN_FILE))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--randomize", "object_weight=0.5:2"], "unknown randomize parameter"),
        (["--randomize", "object_mass=1:1"], "is empty"),
        (["--randomize", "object_mass=2:1"], "is inverted"),
        (["--randomize", "object_mass=0:2"], "must be positive"),
        (["--randomize", "object_mass=-1:2"], "must be positive"),
        (["--randomize", "object_mass"], "NAME=LO:HI"),
        (["--randomize", "object_mass=2"], "NAME=LO:HI"),
        (["--randomize", "object_mass=a:2"], "not a number"),
        (["--randomize", ""], "NAME=LO:HI"),
        (["--randomize", "object_mass=0.5:2,object_mass=1:2"], "given twice"),
        (["--actuation-noise", "-0.1"], "actuation_noise must be >= 0"),
        (["--actuation-noise", "nan"], "actuation_noise must be >= 0"),
    ],
)
def test_bad_hidden_physics_exits_2_with_one_line(args, message, tmp_path, capsys):
    argv = ["collect", "--episodes", "2", "--length", "3", "--out", str(tmp_path / "x"), *args]
    status, err = run_cli(argv, capsys)
    assert status == 2
    assert err.startswith("trajebm: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_resume_with_other_hidden_physics_is_refused(whole, tmp_path, monkeypatch, capsys):
    real_write, calls = storage.write_episodes, []

    def write_then_interrupt(path, episodes):
        real_write(path, episodes)
        calls.append(path)
        raise KeyboardInterrupt

    out = tmp_path / "ds"
    monkeypatch.setattr(storage, "write_episodes", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        collect(CFG, out, progress=False)
    monkeypatch.setattr(storage, "write_episodes", real_write)
    others = [replace(CFG, randomize=parse_randomize("object_mass=0.5:3")),
              replace(CFG, randomize=()), replace(CFG, actuation_noise=0.0)]
    for other in others:
        with pytest.raises(UsageError, match="other settings"):
            collect(other, out, resume=True, progress=False)
    argv = ["collect", "--episodes", "4", "--length", "5", "--seed", "1", "--chunk", "2",
            "--randomize", "object_mass=0.5:2", "--out", str(out), "--resume"]
    status, err = run_cli(argv, capsys)
    assert status == 2 and "other settings" in err and err.count("\n") == 1
    collect(CFG, out, resume=True, progress=False)
    assert main_bytes(out) == main_bytes(whole)


def test_minari_reads_a_randomised_dataset(whole):
    minari = pytest.importorskip("minari")
    ds = minari.MinariDataset(whole / "data")
    assert ds.total_episodes == CFG.episodes and ds[3].observations.shape == (CFG.length + 1, 31)
