"""Sharded collection: blocks of episode ids, and joining the shards into one dataset.

``collect(..., shard=(i, n))`` collects only the contiguous block :func:`shard_ids` of episode
ids, into a shard folder (metadata format ``trajebm-shadowhand-shard``). :func:`merge_shards`
joins the n shards into the dataset an unsharded run writes: the same ``main_data.hdf5``
bytes, and the same metadata except the run-specific ``git_commit`` (the first shard's) and
``dataset_id`` (from the merge's output folder, as ``collect`` derives it). Both hold when the
policy treats episodes independently (every built-in does; a ``module:function`` policy must
act on each row alone).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py

from trajebm.data import storage
from trajebm.data.metadata import (
    DatasetInfo,
    merged_document,
    settings_differences,
    shard_settings,
)
from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import write_json

SHARD_RE = re.compile(r"^(\d+)/(\d+)$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` as (I, N); UsageError unless 0 <= I < N."""
    match = SHARD_RE.match(text.strip())
    if not match:
        raise UsageError(f"--shard must be I/N (e.g. 0/4), got {text!r}")
    index, count = int(match[1]), int(match[2])
    check_shard((index, count))
    return index, count


def check_shard(shard: tuple[int, int], episodes: int | None = None) -> None:
    """Raise :class:`UsageError` unless shard (I, N) has N >= 1, 0 <= I < N and N <= episodes."""
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"shard {index}/{count} is outside 0..N-1 (N = {count})")
    if episodes is not None and count > episodes:
        raise UsageError(f"cannot split {episodes} episodes into {count} shards")


def shard_ids(episodes: int, index: int, count: int) -> range:
    """The contiguous block of episode ids that shard ``index`` of ``count`` collects."""
    return range(index * episodes // count, (index + 1) * episodes // count)


def _read_shard(path: Path) -> tuple[dict[str, Any], DatasetInfo]:
    """The metadata of the finished shard folder ``path``; UsageError if it is not one."""
    meta_path = path / "data" / storage.METADATA_FILE
    if not path.is_dir():
        raise UsageError(f"shard {path} does not exist")
    if not meta_path.is_file() or not (path / "data" / storage.MAIN_FILE).is_file():
        if (path / storage.PARTIAL_DIR / storage.MANIFEST_FILE).is_file():
            raise UsageError(f"shard {path} is unfinished; finish it with `trajebm collect "
                             "--resume` and the same options")
        raise UsageError(f"{path} is not a collection shard (no data/{storage.METADATA_FILE})")
    try:
        doc = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{meta_path} is unreadable: {err}") from None
    try:
        info = DatasetInfo.from_json(doc, path)
    except UsageError:
        info = None
    if info is None or info.format != storage.SHARD_FORMAT_NAME or info.shard is None:
        raise UsageError(f"{path} is not a collection shard (collect it with --shard I/N)")
    return doc, info


def _shard_order(paths: list[Path], docs: list[dict[str, Any]], infos: list[DatasetInfo]
                 ) -> list[int]:
    """The order that sorts the shards by index; UsageError unless they form one collection."""
    reference = shard_settings(docs[0])
    for path, doc in zip(paths, docs, strict=True):
        other = shard_settings(doc)
        if other != reference:
            differ = settings_differences(reference, other)
            raise UsageError(f"shards {paths[0]} and {path} differ in settings or versions "
                             f"({', '.join(differ)}); they are not one collection")
    counts = {info.shard.count for info in infos}
    if len(counts) > 1:
        raise UsageError(f"shards were split different ways (N = {sorted(counts)})")
    count = counts.pop()
    seen: dict[int, Path] = {}
    for path, info in zip(paths, infos, strict=True):
        index = info.shard.index
        if index in seen:
            raise UsageError(f"shard {index}/{count} is given twice ({seen[index]} and {path})")
        seen[index] = path
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise UsageError(f"missing shard(s) {', '.join(f'{i}/{count}' for i in missing)}")
    return sorted(range(len(infos)), key=lambda j: infos[j].shard.index)


def _check_episodes(path: Path, info: DatasetInfo) -> None:
    """UsageError unless the shard's file holds exactly the episodes of its block."""
    try:
        with h5py.File(path / "data" / storage.MAIN_FILE, "r") as file:
            ids = sorted(int(group.attrs["id"]) for group in file.values())
    except (OSError, KeyError) as err:
        raise UsageError(f"shard {path}: cannot read {storage.MAIN_FILE} ({err})") from None
    block = info.shard
    if ids != list(range(block.first, block.stop)):
        raise UsageError(f"shard {path} does not hold episodes {block.first}..{block.stop}")


def merge_shards(shards: Sequence[str | os.PathLike], out: str | os.PathLike,
                 dataset_id: str | None = None) -> Path:
    """Join the shard folders of one collection into the dataset ``out``; return ``out/data``.

    The result equals the unsharded collection (see the module docstring). Refuses shards
    of different settings or versions, missing, duplicate or unfinished shards, and an
    existing non-empty ``out``; it is built in a temporary sibling folder and renamed, so a
    failure leaves no output behind.
    """
    if not shards:
        raise UsageError("give the shard folders to merge")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists; merge into a new folder")
    dataset_id = storage.check_dataset_id(dataset_id or storage.default_dataset_id(out))
    paths = [Path(p) for p in shards]
    docs, infos = zip(*(_read_shard(p) for p in paths), strict=True)
    order = _shard_order(paths, list(docs), list(infos))
    paths, docs, infos = ([seq[j] for j in order] for seq in (paths, docs, infos))
    for path, info in zip(paths, infos, strict=True):
        _check_episodes(path, info)
    tmp = out.with_name(f".{out.name}.merge-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        data_dir = tmp / "data"
        data_dir.mkdir(parents=True)
        storage.merge_episode_files([p / "data" / storage.MAIN_FILE for p in paths],
                                    data_dir / storage.MAIN_FILE)
        size = round((data_dir / storage.MAIN_FILE).stat().st_size / 1e6, 3)
        storage.write_metadata(data_dir, merged_document(docs[0], dataset_id, size))
        write_json(tmp / "run.json", {"merged_from": [str(p.resolve()) for p in paths],
                                      "shard_git_commits": [i.git_commit for i in infos]})
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "data"
