"""`trajebm collect --shard I/N` and `trajebm dataset merge`: equal to one run, bad shard sets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_collect import run_cli, run_data_cli

from trajebm.data import TrajectoryDataset, storage
from trajebm.data.collection import CollectConfig, collect
from trajebm.data.policies import PolicyConfig
from trajebm.data.shards import merge_shards, shard_ids
from trajebm.engine.errors import UsageError

CFG = CollectConfig(episodes=5, length=4, policy=PolicyConfig("pd", random_every=3), seed=2,
                    chunk_episodes=2)
SETTINGS = ["--episodes", "5", "--length", "4", "--policy", "pd", "--random-every", "3",
            "--seed", "2", "--chunk", "2", "--quiet"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Shards 0..2 of 3 of CFG, collected through the command line."""
    root = tmp_path_factory.mktemp("shards")
    for i in range(3):
        argv = ["collect", *SETTINGS, "--shard", f"{i}/3", "--out", str(root / f"s{i}")]
        assert run_data_cli(argv) == 0
    return root


def test_shard_ids_are_contiguous_and_cover_every_episode():
    for episodes, count in ((5, 3), (7, 7), (100, 8)):
        blocks = [shard_ids(episodes, i, count) for i in range(count)]
        assert [i for b in blocks for i in b] == list(range(episodes))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_merged_shards_equal_an_unsharded_run(shards, tmp_path, capsys):
    collect(CFG, tmp_path / "whole" / "ds", workers=2, progress=False)
    argv = ["dataset", "merge", str(shards / "s2"), str(shards / "s0"), str(shards / "s1"),
            "--out", str(tmp_path / "merged" / "ds")]
    assert run_cli(argv, capsys)[0] == 0
    whole, merged = tmp_path / "whole/ds/data", tmp_path / "merged/ds/data"
    main = storage.MAIN_FILE
    assert (merged / main).read_bytes() == (whole / main).read_bytes()
    meta_whole = json.loads((whole / storage.METADATA_FILE).read_text())
    meta_merged = json.loads((merged / storage.METADATA_FILE).read_text())
    for meta in (meta_whole, meta_merged):
        meta["trajebm"].pop("git_commit")  # run-specific: the first shard's commit
    assert meta_merged == meta_whole
    assert not list(tmp_path.glob("merged/.*"))  # no temporary folder left
    arrays = TrajectoryDataset(tmp_path / "merged/ds", progress=False).arrays
    assert arrays.num_episodes == CFG.episodes and (arrays.lengths == CFG.length).all()
    with pytest.raises(UsageError, match="trajebm dataset merge"):
        storage.read_metadata(shards / "s1")


def test_minari_reads_a_merged_dataset(shards, tmp_path):
    minari = pytest.importorskip("minari")
    out = merge_shards([shards / f"s{i}" for i in range(3)], tmp_path / "m")
    ds = minari.MinariDataset(out)
    assert ds.total_episodes == CFG.episodes and ds.total_steps == CFG.episodes * CFG.length
    assert ds[4].observations.shape == (CFG.length + 1, 31)


def test_merge_refuses_bad_shard_sets(shards, tmp_path, capsys):
    s0, s1, s2 = (str(shards / f"s{i}") for i in range(3))
    other_seed = tmp_path / "seed9"
    argv = ["collect", *SETTINGS, "--seed", "9", "--shard", "1/3", "--out", str(other_seed)]
    assert run_cli(argv, capsys)[0] == 0
    other_version = tmp_path / "version"
    shutil.copytree(s1, other_version)
    meta_path = other_version / "data" / storage.METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["trajebm"]["collection"]["versions"]["mujoco"] = "0.0.1"
    meta_path.write_text(json.dumps(meta))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(s1, unfinished)
    shutil.rmtree(unfinished / "data")
    (unfinished / ".partial").mkdir()
    (unfinished / ".partial/collect.json").write_text("{}")
    other_split = tmp_path / "split"
    argv = ["collect", *SETTINGS, "--shard", "1/2", "--out", str(other_split)]
    assert run_cli(argv, capsys)[0] == 0
    cases = [
        ([s0, s2], "missing shard(s) 1/3"),
        ([s0, s1, s1, s2], "given twice"),
        ([s0, str(other_seed), s2], "differ in settings or versions"),
        ([s0, str(other_version), s2], "trajebm.collection"),
        ([s0, str(unfinished), s2], "unfinished"),
        ([s0, str(other_split), s2], "split different ways"),
        ([s0, str(tmp_path / "nowhere"), s2], "does not exist"),
    ]
    for paths, message in cases:
        status, err = run_cli(["dataset", "merge", *paths, "--out", str(tmp_path / "out")],
                              capsys)
        assert status == 2, message
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize(
    ("shard", "message"),
    [("3/3", "outside 0..N-1"), ("0/0", "outside"), ("1-2", "must be I/N"), ("a/b", "I/N"),
     ("0/9", "cannot split 5 episodes into 9 shards")],
)
def test_bad_shard_arguments_exit_2(shard, message, tmp_path, capsys):
    argv = ["collect", *SETTINGS, "--shard", shard, "--out", str(tmp_path / "x")]
    status, err = run_cli(argv, capsys)
    assert status == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_a_shard_resumes_only_as_the_same_shard(shards, capsys):
    before = (shards / "s0/data" / storage.MAIN_FILE).read_bytes()
    argv = ["collect", *SETTINGS, "--shard", "1/3", "--out", str(shards / "s0"), "--resume"]
    status, err = run_cli(argv, capsys)
    assert status == 2 and "other settings" in err
    assert (shards / "s0/data" / storage.MAIN_FILE).read_bytes() == before
