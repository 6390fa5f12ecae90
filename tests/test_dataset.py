"""TrajectoryDataset windows/splits/statistics, `trajebm dataset info|render`, bad datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import imageio.v2 as imageio
import numpy as np
import pytest
from _hand_fixtures import TINY, tiny_dataset
from test_collect import run_data_cli

from trajebm.data import DatasetInfo, TrajectoryDataset, dataset_info, read_info, render_episode
from trajebm.data.dataset import RELATIVE_FLOOR, NormStats
from trajebm.data.synthetic import write_synthetic_dataset
from trajebm.engine.errors import UsageError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.getbasetemp())


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    status = run_data_cli(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


LEGACY_HAND = Path(__file__).parent / "fixtures" / "legacy" / "hand"


def test_metadata_is_typed(tiny):
    ds = TrajectoryDataset(tiny)
    info = ds.info
    assert isinstance(info, DatasetInfo) and info == read_info(tiny)[1]
    assert info.env_id == TINY.env_id and info.dataset_id == "tiny-v0"
    assert info.state_names == tuple(ds.state_names) and len(info.state_names) == 31
    assert (info.state_dim, info.action_dim) == (31, 20) and not info.include_velocities
    assert info.dt == pytest.approx(0.04) and info.n_substeps == 20
    assert (info.episodes, info.length, info.seed) == (TINY.episodes, TINY.length, TINY.seed)
    assert info.total_steps == TINY.episodes * TINY.length and info.shard is None
    assert info.policy["name"] == "scripted" and info.simulator_versions["mujoco"]
    assert ds.metadata["trajebm"]["state_names"] == list(info.state_names)  # the raw document


def test_datasets_from_before_load_with_typed_metadata(tmp_path):
    hand = tmp_path / "hand"
    shutil.copytree(LEGACY_HAND, hand)  # the reader writes its cache beside the dataset
    ds = TrajectoryDataset(hand, context=4)
    assert ds.info.dataset_id == "hand-v0" and ds.info.env_id == "trajebm/ShadowHandBlock-v0"
    assert ds.info.total_episodes == 20 and ds.info.length == 16 and ds.info.seed == 5
    assert ds.info.policy["random_every"] == 4 and ds.info.dt == pytest.approx(0.04)
    assert ds.trajectories("all")[0].shape == (20, 17, 31)
    synthetic = write_synthetic_dataset(tmp_path / "synthetic", 3, length=5, progress=False)
    info = TrajectoryDataset(synthetic).info
    assert info.env_id == "synthetic" and info.dt is None and info.n_substeps is None
    with pytest.raises(UsageError, match="no simulator to render"):
        render_episode(synthetic, 0, tmp_path / "x.png")


def test_metadata_without_a_required_key_is_one_usage_error(tiny, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny, other)
    meta = json.loads((other / "data/metadata.json").read_text())
    del meta["trajebm"]["state_names"]
    (other / "data/metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="has no 'trajebm.state_names'"):
        TrajectoryDataset(other)
    assert DatasetInfo.from_json({**meta, "trajebm": {**meta["trajebm"], "state_names": ["a"]}}
                                 ).state_names == ("a",)


def test_windows_match_a_naive_loop(tiny):
    ds = TrajectoryDataset(tiny, context=4)
    states, actions = ds.trajectories("train")
    expected = [
        (states[e, t - 3 : t + 1], actions[e, t], states[e, t + 1])
        for e in range(len(states)) for t in range(3, TINY.length)
    ]
    windows = ds.windows("train")
    assert len(windows.context) == len(expected) == len(ds.split_ids["train"]) * (TINY.length - 3)
    for got, want in zip(windows, zip(*expected, strict=True), strict=True):
        np.testing.assert_array_equal(got, np.stack(want))


def test_split_is_by_trajectory_deterministic_and_90_10(tiny):
    a = TrajectoryDataset(tiny, seed=0)
    b = TrajectoryDataset(tiny, seed=0)
    c = TrajectoryDataset(tiny, seed=1)
    train, test = a.split_ids["train"], a.split_ids["test"]
    assert len(train) == 9 and len(test) == 1
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(range(TINY.episodes))
    np.testing.assert_array_equal(b.split_ids["test"], test)
    assert any(not np.array_equal(TrajectoryDataset(tiny, seed=s).split_ids["test"], test)
               for s in range(1, 5))
    assert c.trajectories("test")[0].shape == (1, TINY.length + 1, 31)


def test_segment_windows_hold_the_next_h_states_and_actions(tiny):
    ds = TrajectoryDataset(tiny, context=4)
    states, actions = ds.trajectories("train")
    w = ds.windows("train", horizon=3)
    per_episode = TINY.length - 4 - 3 + 2
    assert w.next_state.shape == (len(states) * per_episode, 3, 31)
    assert w.action.shape == (len(states) * per_episode, 3, 20)
    e, t = 1, 5  # window of episode 1 whose context ends at state t
    row = e * per_episode + (t - 3)
    np.testing.assert_array_equal(w.context[row], states[e, t - 3 : t + 1])
    np.testing.assert_array_equal(w.next_state[row], states[e, t + 1 : t + 4])
    np.testing.assert_array_equal(w.action[row], actions[e, t : t + 3])


def test_validation_split_comes_from_train_and_never_moves_the_test_split(tiny):
    plain = TrajectoryDataset(tiny, test_fraction=0.2, seed=4)
    with_val = TrajectoryDataset(tiny, test_fraction=0.2, seed=4, val_fraction=0.25)
    np.testing.assert_array_equal(plain.split_ids["test"], with_val.split_ids["test"])
    val, train = with_val.split_ids["val"], with_val.split_ids["train"]
    assert len(val) == 2 and set(val) | set(train) == set(plain.split_ids["train"])
    assert not set(val) & set(train)
    assert with_val.split == {"seed": 4, "test_fraction": 0.2, "val_fraction": 0.25}


def test_near_constant_dimensions_hit_a_relative_floor():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4)) * np.array([1.0, 2.0, 1e-7, 0.5])
    stats = NormStats.of(x)
    assert stats.floored == (2,)
    assert stats.std[2] == pytest.approx(RELATIVE_FLOOR * np.median(x.std(0)))
    assert np.abs(stats.normalize(x)[:, 2]).max() < 1e-3  # not blown up to O(1)


def test_normalisation_uses_the_training_split_only(tiny):
    ds = TrajectoryDataset(tiny, test_fraction=0.3, seed=2)
    train_states, _ = ds.trajectories("train")
    all_states, _ = ds.trajectories("all")
    # statistics come from the stored float64 values, trajectories from the float32 cache
    np.testing.assert_allclose(ds.state_stats.mean, train_states.reshape(-1, 31).mean(0),
                               rtol=1e-6)
    assert not np.allclose(ds.state_stats.mean, all_states.reshape(-1, 31).mean(0))
    z = ds.windows("train", normalized=True)
    raw = ds.windows("train")
    np.testing.assert_allclose(ds.state_stats.denormalize(z.next_state), raw.next_state)
    zs = ds.trajectories("train", normalized=True)[0].reshape(-1, 31)
    np.testing.assert_allclose(zs.mean(0), 0, atol=1e-6)
    assert np.all(ds.state_stats.std > 0)


def test_windows_longer_than_episodes_are_refused(tiny):
    with pytest.raises(UsageError, match="needs at least"):
        TrajectoryDataset(tiny, context=TINY.length + 1)
    with pytest.raises(UsageError, match="split"):
        TrajectoryDataset(tiny).windows("validation")


def test_dataset_info_cli(tiny, capsys):
    info = dataset_info(tiny)
    assert info["episodes"] == TINY.episodes and info["steps"] == TINY.episodes * TINY.length
    assert info["state_dim"] == 31 and info["action_dim"] == 20
    status, out, _ = run_cli(["dataset", "info", str(tiny)], capsys)
    assert status == 0
    for needle in ("episodes:      10", "scripted", "mujoco=", "gymnasium-robotics=", "31"):
        assert needle in out


def test_render_png_strip_and_video(tiny, tmp_path, capsys):
    strip = render_episode(tiny, 2, tmp_path / "strip.png", width=48, height=40)
    image = imageio.imread(strip)
    assert image.shape[:2] == (40, 48 * 8) and image.std() > 1
    status, _, _ = run_cli(["dataset", "render", str(tiny), "--episode", "1", "--out",
                            str(tmp_path / "ep.gif"), "--width", "32", "--height", "32"], capsys)
    assert status == 0 and len(imageio.mimread(tmp_path / "ep.gif")) == TINY.length + 1
    render_episode(tiny, 0, tmp_path / "ep.mp4", width=32, height=32, every=3)
    assert (tmp_path / "ep.mp4").stat().st_size > 0


def corrupt_copy(tiny: Path, tmp_path: Path, edit) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    with h5py.File(bad / "data/main_data.hdf5", "a") as f:
        edit(f)
    return bad


def _wrong_shape(f):
    del f["episode_1/observations"]
    f["episode_1/observations"] = np.zeros((TINY.length + 1, 30))


def _nan_state(f):
    f["episode_2/observations"][5, 3] = np.nan


def _missing_episode(f):
    del f["episode_4"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [(_wrong_shape, "expected (T+1, 31)"), (_nan_state, "NaN or inf"),
     (_missing_episode, "episode_4 is missing")],
)
def test_bad_datasets_exit_2_with_one_line(tiny, tmp_path, capsys, edit, message):
    bad = corrupt_copy(tiny, tmp_path, edit)
    status, _, err = run_cli(["dataset", "info", str(bad)], capsys)
    assert status == 2 and message in err and err.count("\n") == 1
    with pytest.raises(UsageError, match="episode"):
        TrajectoryDataset(bad)


def test_not_a_dataset_exit_2(tiny, tmp_path, capsys):
    status, _, err = run_cli(["dataset", "info", str(tmp_path / "missing")], capsys)
    assert status == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    status, _, err = run_cli(["dataset", "info", str(tmp_path / "empty")], capsys)
    assert status == 2 and "is not a dataset" in err
    other = tmp_path / "other"
    shutil.copytree(tiny, other)
    meta = json.loads((other / "data/metadata.json").read_text())
    del meta["trajebm"]
    (other / "data/metadata.json").write_text(json.dumps(meta))
    status, _, err = run_cli(["dataset", "info", str(other)], capsys)
    assert status == 2 and "not a trajebm" in err
    (other / "data/metadata.json").write_text("{not json")
    status, _, err = run_cli(["dataset", "info", str(other)], capsys)
    assert status == 2 and "not valid JSON" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--episode", "99", "--out", "x.png"], "out of range"),
     (["--out", "x.avi"], ".mp4, .gif or .png"),
     (["--every", "0", "--out", "x.gif"], "positive")],
)
def test_bad_render_arguments_exit_2(tiny, tmp_path, capsys, args, message):
    args = [a if a not in ("x.png", "x.avi", "x.gif") else str(tmp_path / a) for a in args]
    status, _, err = run_cli(["dataset", "render", str(tiny), *args], capsys)
    assert status == 2 and message in err and err.count("\n") == 1
