"""What every run records beside its outputs: config, seeds, package versions, git commit."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trajebm.engine.errors import UsageError

TRACKED_PACKAGES = (
    "trajebm", "torch", "numpy", "scipy", "h5py", "gymnasium", "gymnasium-robotics", "mujoco",
    "scikit-learn", "pillow",
)


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed version of each named distribution (None when absent)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(path: str | os.PathLike = ".") -> str | None:
    """The commit of the repository holding this package (with '+dirty' if modified), else None."""
    here = Path(__file__).resolve().parent
    for cwd in (here, Path(path)):
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=cwd, capture_output=True, text=True, check=True,
            ).stdout.strip()
            return commit + ("+dirty" if dirty else "")
        except (OSError, subprocess.CalledProcessError):
            continue
    return None


def jsonable(obj: Any) -> Any:
    """Turn dataclasses, paths, tuples and numpy scalars into plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def run_info(config: Any, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance record of a run: its config, seed, versions, commit, command line, time."""
    return {
        "config": jsonable(config),
        "seed": seed,
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "argv": sys.argv,
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **jsonable(extra),
    }


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync and rename: never half-written.

    On any failure the temp file is removed and ``path`` keeps its previous content; a full disk
    (ENOSPC, EDQUOT) becomes a :class:`~trajebm.engine.errors.UsageError` saying so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        try:
            os.chmod(tmp, 0o666 & ~umask)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UsageError(f"{path}: no space left on the device ({len(data):,} bytes to "
                             f"write); the previous file is unchanged, free some space and "
                             f"run again") from err
        raise
    fsync_dir(path.parent)


def atomic_save_npy(array: Any, path: str | os.PathLike) -> Path:
    """``numpy.save`` to ``path`` atomically (temp file, fsync, rename): never half-written."""
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (temp file, fsync, rename): never half-written."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry to disk, so a rename inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_folder(out_dir: str | os.PathLike, done_file: str, resume: bool = False,
               in_progress: str = "checkpoint.pt") -> Path:
    """Check ``out_dir`` can take a new run: a folder (or absent) holding neither a finished
    run (``done_file``) nor one in progress (``in_progress``); ``resume`` allows both.

    Checked before anything is written, so refusing never touches the run that is there.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    if resume:
        return out
    if (out / done_file).exists():
        raise UsageError(f"{out} already holds a trained model; choose another --out or "
                         f"pass --resume to continue it")
    if (out / in_progress).exists():
        raise UsageError(f"{out} holds a run in progress ({in_progress}); pass --resume to "
                         f"continue it, or choose another --out")
    return out


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(jsonable(obj), indent=2) + "\n").encode())


def write_run_info(out_dir: str | os.PathLike, config: Any, seed: int | None = None,
                   **extra: Any) -> dict[str, Any]:
    """Write ``run.json`` (see :func:`run_info`) into ``out_dir`` and return the record."""
    info = run_info(config, seed, **extra)
    write_json(Path(out_dir) / "run.json", info)
    return info
