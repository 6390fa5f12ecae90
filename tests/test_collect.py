"""`trajebm collect`: determinism, Minari compatibility, policies, crash-safe resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from _hand_fixtures import TINY, tiny_dataset

from trajebm.cli import data as data_cli
from trajebm.cli.options import console_parser, run_command
from trajebm.data.collection import CollectConfig, check_config, collect
from trajebm.data.policies import PolicyConfig, policy_actions
from trajebm.engine.errors import UsageError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.getbasetemp())


def run_data_cli(argv: list[str]) -> int:
    """Run the data subcommands through trajebm's real error handling; the exit status."""
    return run_command(console_parser("trajebm", "trajebm's data commands",
                                      [data_cli.register]), argv)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """:func:`run_data_cli`: (status, stderr)."""
    status = run_data_cli(argv)
    return status, capsys.readouterr().err


def episode_data(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path / "data" / "main_data.hdf5", "r") as f:
        return {f"{g}/{k}": f[g][k][()] for g in f for k in f[g]}


def test_same_seed_gives_identical_files_regardless_of_workers(tiny, tmp_path):
    """Same config and mujoco version: byte-identical episode file and identical metadata."""
    again = tmp_path / "tiny"
    collect(TINY, again, workers=1, progress=False)
    main = "data/main_data.hdf5"
    assert (again / main).read_bytes() == (tiny / main).read_bytes()
    meta_a = json.loads((tiny / "data/metadata.json").read_text())
    meta_b = json.loads((again / "data/metadata.json").read_text())
    for meta in (meta_a, meta_b):
        meta["trajebm"].pop("git_commit")  # another engineer may commit between the runs
    assert meta_a == meta_b
    other = tmp_path / "other"
    collect(replace(TINY, seed=4, episodes=2), other, progress=False)
    assert not np.allclose(episode_data(other)["episode_0/observations"],
                           episode_data(tiny)["episode_0/observations"])


def test_layout_and_provenance(tiny):
    data = episode_data(tiny)
    assert len({k.split("/")[0] for k in data}) == TINY.episodes
    obs, act = data["episode_0/observations"], data["episode_0/actions"]
    assert obs.shape == (TINY.length + 1, 31) and act.shape == (TINY.length, 20)
    assert data["episode_0/truncations"][-1] and not data["episode_0/terminations"].any()
    meta = json.loads((tiny / "data/metadata.json").read_text())
    assert meta["total_episodes"] == TINY.episodes
    assert meta["total_steps"] == TINY.episodes * TINY.length
    own = meta["trajebm"]
    assert own["versions"]["mujoco"] and own["versions"]["gymnasium-robotics"]
    assert own["policy"]["name"] == "scripted" and own["seed"] == TINY.seed
    assert len(own["state_names"]) == 31
    assert not (tiny / ".partial").exists()


def test_minari_reads_our_files(tiny, tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    ds = minari.MinariDataset(tiny / "data")
    assert ds.total_episodes == TINY.episodes and ds.total_steps == TINY.episodes * TINY.length
    episode = ds[3]
    np.testing.assert_array_equal(episode.observations,
                                  episode_data(tiny)["episode_3/observations"])
    assert episode.actions.shape == (TINY.length, 20)
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    collect(replace(TINY, episodes=2), root / "trajebm" / "tiny-v1", progress=False)
    loaded = minari.load_dataset("trajebm/tiny-v1")
    assert loaded.id == "trajebm/tiny-v1" and len(loaded) == 2
    assert loaded.recover_environment().observation_space.shape == (31,)


def test_policies_have_the_promised_character():
    rng = np.random.default_rng
    for name in ("random", "ou", "scripted"):
        actions = policy_actions(PolicyConfig(name), 200, rng(0))
        assert actions.shape == (200, 20) and actions.dtype == np.float32
        assert np.abs(actions).max() <= 1.0
    smooth = np.abs(np.diff(policy_actions(PolicyConfig("scripted"), 200, rng(0)), axis=0)).mean()
    rough = np.abs(np.diff(policy_actions(PolicyConfig("random"), 200, rng(0)), axis=0)).mean()
    ou = policy_actions(PolicyConfig("ou"), 2000, rng(0))
    lag1 = np.corrcoef(ou[:-1, 0], ou[1:, 0])[0, 1]
    assert smooth < rough / 5 and lag1 > 0.5
    mixed = policy_actions(PolicyConfig("scripted", random_every=4), 200, rng(0))
    base = policy_actions(PolicyConfig("scripted"), 200, rng(0))
    changed = np.flatnonzero(np.any(mixed != base, axis=1))
    np.testing.assert_array_equal(changed, np.arange(3, 200, 4))


def test_scripted_policy_moves_the_object(tiny):
    data = episode_data(tiny)
    moved = [np.ptp(data[f"episode_{i}/observations"][:, 24:31], axis=0).max()
             for i in range(TINY.episodes)]
    assert np.median(moved) > 2e-3


def test_kill_9_mid_run_then_resume_completes_exactly(tiny, tmp_path):
    out = tmp_path / "killed"
    argv = [sys.executable, "-c", "import sys; from trajebm.cli import main; sys.exit(main())",
            "collect", "--episodes", str(TINY.episodes),
            "--length", str(TINY.length), "--policy", "scripted", "--seed", str(TINY.seed),
            "--chunk", "1", "--workers", "1", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob(".partial/chunk_*.hdf5"))) < 2:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "data/metadata.json").exists(), "collection finished before the kill"
    with pytest.raises(UsageError, match="--resume"):
        collect(replace(TINY, chunk_episodes=1), out, progress=False)
    with pytest.raises(UsageError, match="other settings"):
        collect(replace(TINY, chunk_episodes=1, seed=99), out, resume=True, progress=False)
    collect(replace(TINY, chunk_episodes=1), out, workers=2, resume=True, progress=False)
    assert not (out / ".partial").exists()
    assert episode_data(out).keys() == episode_data(tiny).keys()
    assert (out / "data/main_data.hdf5").read_bytes() == (tiny / "data/main_data.hdf5").read_bytes()
    collect(replace(TINY, chunk_episodes=1), out, resume=True, progress=False)  # already done


def test_interrupt_between_chunks_resumes(tmp_path, monkeypatch):
    from trajebm.data import storage

    cfg = replace(TINY, episodes=3, chunk_episodes=1)
    real_write, calls = storage.write_episodes, []

    def write_then_interrupt(path, episodes):
        real_write(path, episodes)
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(storage, "write_episodes", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        collect(cfg, tmp_path / "ds", progress=False)
    monkeypatch.setattr(storage, "write_episodes", real_write)
    assert len(list((tmp_path / "ds/.partial").glob("chunk_*.hdf5"))) == 2
    collect(cfg, tmp_path / "ds", resume=True, progress=False)
    assert len(episode_data(tmp_path / "ds")) == 3 * 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "Nope-v0"], "unknown env"),
        (["--policy", "telepathy"], "unknown policy"),
        (["--episodes", "0"], "episodes must be positive"),
        (["--length", "-3"], "length must be positive"),
        (["--workers", "0"], "workers must be positive"),
        (["--chunk", "0"], "chunk_episodes must be positive"),
        (["--random-every", "-1"], "random_every"),
    ],
)
def test_bad_collect_arguments_exit_2_with_one_line(args, message, tmp_path, capsys):
    argv = ["collect", "--episodes", "2", "--length", "3", "--out", str(tmp_path / "x"), *args]
    status, err = run_cli(argv, capsys)
    assert status == 2
    assert err.startswith("trajebm: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_existing_outputs_are_protected(tiny, tmp_path, capsys):
    before = (tiny / "data/main_data.hdf5").read_bytes()
    status, err = run_cli(["collect", "--episodes", "2", "--out", str(tiny)], capsys)
    assert status == 2 and "--overwrite" in err
    status, err = run_cli(["collect", "--episodes", "2", "--out", str(tiny), "--resume"], capsys)
    assert status == 2 and "other settings" in err
    assert (tiny / "data/main_data.hdf5").read_bytes() == before
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    status, err = run_cli(["collect", "--episodes", "2", "--out", str(foreign), "--overwrite"],
                          capsys)
    assert status == 2 and "not a trajebm dataset" in err
    assert (foreign / "chapter1.tex").read_text() == "precious"
    afile = tmp_path / "file"
    afile.write_text("x")
    status, err = run_cli(["collect", "--episodes", "2", "--out", str(afile)], capsys)
    assert status == 2 and "not a directory" in err


def test_overwrite_replaces_a_dataset(tmp_path):
    cfg = replace(TINY, episodes=2, length=3)
    collect(cfg, tmp_path / "ds", progress=False)
    collect(replace(cfg, episodes=1), tmp_path / "ds", overwrite=True, progress=False)
    assert len(episode_data(tmp_path / "ds")) == 5


def test_collect_defaults_are_valid_even_when_the_core_count_is_unknown(tmp_path, monkeypatch):
    cfg = CollectConfig()
    assert cfg.env_id == "trajebm/ShadowHandBlock-v0" and cfg.length == 100
    check_config(cfg)
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # workers=None falls back to 1
    collect(replace(TINY, episodes=1, length=2), tmp_path / "one", progress=False)
    with h5py.File(tmp_path / "one" / "data" / "main_data.hdf5", "r") as f:
        assert list(f) == ["episode_0"]
