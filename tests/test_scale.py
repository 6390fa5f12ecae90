"""Data at scale: the read cache, lazy windows, constant-size batch state, exact resume."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from _hand_fixtures import tiny_dataset
from _traj_fixtures import tiny_fit

from trajebm.data import TrajectoryDataset, cache
from trajebm.data.dataset import NormStats
from trajebm.data.synthetic import write_synthetic_dataset
from trajebm.engine.errors import UsageError
from trajebm.fit import TrajectoryBatches, fit_model
from trajebm.models import EBMConfig, build_model


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "walks", 60, 20,
                                   progress=False)


def model_for(segment: int = 1):
    return build_model(EBMConfig(hidden=8, layers=1, segment=segment, state_dim=31,
                                 action_dim=20))


@pytest.mark.parametrize("segment", [1, 3])
def test_lazy_batches_are_the_materialised_windows_each_once_per_epoch(synthetic, segment):
    ds = TrajectoryDataset(synthetic, context=4, dtype="float32", progress=False)
    w = ds.windows("train", normalized=True, horizon=segment)
    m = len(w.context)
    x_all = w.next_state.reshape(m, -1)
    c_all = np.concatenate([w.context.reshape(m, -1), w.action.reshape(m, -1)], 1)
    batches = TrajectoryBatches(ds, 37, seed=2, model=model_for(segment))
    rows = []
    for _ in range(m // 37):
        x, c = next(batches)
        rows.append(np.concatenate([x.numpy(), c.numpy()], 1))
    rows = np.concatenate(rows)
    assert len(np.unique(rows, axis=0)) == len(rows) == (m // 37) * 37
    table = {r.tobytes(): i for i, r in enumerate(np.concatenate([x_all, c_all], 1))}
    assert all(r.tobytes() in table for r in rows)


def test_batch_state_is_the_same_size_for_ten_times_the_data(tmp_path):
    sizes = []
    for episodes in (20, 200):
        data = write_synthetic_dataset(tmp_path / f"d{episodes}", episodes, 20, progress=False)
        ds = TrajectoryDataset(data, dtype="float32", progress=False)
        batches = TrajectoryBatches(ds, 16, model=model_for())
        next(batches)
        buf = io.BytesIO()
        torch.save(batches.state_dict(), buf)
        sizes.append(len(buf.getvalue()))
    assert sizes[0] == sizes[1]


def test_a_resumed_ebm_run_equals_an_unbroken_one(synthetic, tmp_path):
    cfg = tiny_fit("ebm", steps=8, sampler_steps=3)
    cfg = replace(cfg, batch_size=32, context_noise=0.1, rollout_fraction=0.25,
                  rollout_horizon=2, rollout_every=3, rollout_start=2,
                  train=replace(cfg.train, checkpoint_every=4))
    unbroken = fit_model(synthetic, tmp_path / "a", cfg)
    half = replace(cfg, train=replace(cfg.train, steps=4))
    fit_model(synthetic, tmp_path / "b", half)
    resumed = fit_model(synthetic, tmp_path / "b", cfg, resume=True)
    for a, b in zip(unbroken.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_order_refuses_a_checkpoint_of_another_split(synthetic):
    ds = TrajectoryDataset(synthetic, dtype="float32", progress=False)
    state = TrajectoryBatches(ds, 16, model=model_for()).state_dict()
    other = TrajectoryDataset(synthetic, dtype="float32", test_fraction=0.5, progress=False)
    with pytest.raises(ValueError, match="windows"):
        TrajectoryBatches(other, 16, model=model_for()).load_state_dict(state)


def test_statistics_from_per_episode_moments_are_exact(synthetic):
    ds = TrajectoryDataset(synthetic, test_fraction=0.2, seed=1, progress=False)
    with h5py.File(synthetic / "data" / "main_data.hdf5") as f:
        train = np.concatenate([f[f"episode_{i}/observations"][()]
                                for i in ds.split_ids["train"]])
    direct = NormStats.of(train)
    np.testing.assert_allclose(ds.state_stats.mean, direct.mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ds.state_stats.std, direct.std, rtol=1e-12)


def test_the_cache_is_built_once_and_rebuilt_when_the_dataset_changes(tmp_path, monkeypatch):
    data = write_synthetic_dataset(tmp_path / "d", 8, 10, progress=False)
    builds = []
    build = cache._build
    monkeypatch.setattr(cache, "_build", lambda *a: builds.append(1) or build(*a))
    first = TrajectoryDataset(data, progress=False).trajectories("all")[0]
    TrajectoryDataset(data, progress=False)
    assert len(builds) == 1
    meta_path = data / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["algorithm_name"] = "edited"
    meta_path.write_text(json.dumps(meta))
    TrajectoryDataset(data, progress=False)
    assert len(builds) == 2
    with h5py.File(data / "data" / "main_data.hdf5", "r+") as f:
        f["episode_0/observations"][0] += 1.0
    changed = TrajectoryDataset(data, progress=False).trajectories("all")[0]
    assert len(builds) == 3
    np.testing.assert_allclose(changed[0, 0] - first[0, 0], 1.0, rtol=1e-5)


def test_a_killed_build_leaves_nothing_behind_once_the_next_build_runs(tmp_path):
    data = write_synthetic_dataset(tmp_path / "d", 4, 10, progress=False)
    stale = data / cache.CACHE_DIR / ".build-killed"
    stale.mkdir(parents=True)
    (stale / "states.npy").write_bytes(b"half")
    TrajectoryDataset(data, progress=False)
    assert not stale.exists()


def test_a_current_cache_in_a_read_only_folder_is_used(tmp_path, monkeypatch):
    data = write_synthetic_dataset(tmp_path / "d", 4, 10, progress=False)
    TrajectoryDataset(data, progress=False)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache, "open", refuse, raising=False)  # the lock file cannot be made
    arrays = cache.episode_arrays(data, progress=False)[1]
    assert isinstance(arrays.states, np.memmap)


def test_without_a_writable_folder_the_dataset_is_read_into_memory(tmp_path, monkeypatch):
    data = write_synthetic_dataset(tmp_path / "d", 6, 10, progress=False)
    expected = TrajectoryDataset(data, progress=False).windows("all")
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(cache, "CACHE_DIR", "../file/cache")
    with pytest.warns(UserWarning, match="reading the dataset into memory"):
        got = TrajectoryDataset(data, progress=False).windows("all")
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_minari_still_reads_a_dataset_with_a_cache_beside_it(tmp_path_factory):
    minari = pytest.importorskip("minari")
    tiny = tiny_dataset(tmp_path_factory.getbasetemp())
    before = sorted(p.name for p in (tiny / "data").iterdir())
    TrajectoryDataset(tiny, progress=False)
    assert (tiny / cache.CACHE_DIR / "current" / "key.json").is_file()
    assert sorted(p.name for p in (tiny / "data").iterdir()) == before
    assert minari.MinariDataset(tiny / "data").total_episodes == 10


@pytest.mark.parametrize("delta", [-1, 1, -25])
def test_metadata_totals_that_disagree_with_the_episodes_are_refused(tmp_path, delta):
    data = write_synthetic_dataset(tmp_path / "d", 4, 10, progress=False)
    meta_path = data / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["total_steps"] += delta
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="total_steps"):
        TrajectoryDataset(data, progress=False)
    assert not list((data / cache.CACHE_DIR).glob("*/states.npy"))  # nothing half-made kept


def test_a_synthetic_dataset_refuses_to_overwrite(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(UsageError, match="already exists"):
        write_synthetic_dataset(tmp_path / "taken", 2)
