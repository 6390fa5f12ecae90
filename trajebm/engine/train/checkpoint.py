"""Checkpoints that resume exactly: global RNG state, checksums, atomic files, rank agreement.

A run folder holds ``checkpoint.pt`` (``checkpoint.rank{r}.pt`` for ranks > 0), written
atomically with a CRC32 of its contents (torch.load does not notice damage inside tensor
data; the checksum does), ``best.pt`` (the best validated weights) and ``snapshots/``.
"""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trajebm.engine.errors import UsageError
from trajebm.engine.runinfo import atomic_torch_save
from trajebm.engine.train.distributed import Ranks

CHECKPOINT_KEYS = ("step", "model", "optimizer", "scheduler", "buffer", "batches", "rng",
                   "lr_scale", "rollbacks")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state, for exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_name(rank: int) -> str:
    """The checkpoint file of a rank: ``checkpoint.pt`` for rank 0, ``checkpoint.rank{r}.pt``."""
    return "checkpoint.pt" if rank == 0 else f"checkpoint.rank{rank}.pt"


def snapshot_paths(run_dir: str | os.PathLike) -> list[Path]:
    """A run's weight snapshots (``Trainer.save_snapshot``), oldest first."""
    return sorted((Path(run_dir) / "snapshots").glob("step*.pt"))


def checksum(obj: Any, crc: int = 0) -> int:
    """CRC32 of a nested state (tensor and array bytes, the repr of keys and other leaves)."""
    if torch.is_tensor(obj):
        obj = obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    if isinstance(obj, np.ndarray):
        crc = zlib.crc32(f"{obj.dtype.str}{obj.shape}".encode(), crc)
        return zlib.crc32(np.ascontiguousarray(obj).tobytes(), crc)
    if isinstance(obj, dict):
        for k, v in obj.items():
            crc = checksum(v, zlib.crc32(repr(k).encode(), crc))
        return crc
    if isinstance(obj, (list, tuple)):
        for v in obj:
            crc = checksum(v, crc)
        return crc
    return zlib.crc32(repr(obj).encode(), crc)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A trainer checkpoint's contents; UsageError naming the file if it is not one."""
    path = Path(path)
    unreadable = (f"{path} is not a readable checkpoint (truncated or corrupted: {{}}); delete "
                  f"the run's checkpoints to start over")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file
        raise UsageError(unreadable.format(type(err).__name__)) from err
    if not isinstance(state, dict) or not all(k in state for k in CHECKPOINT_KEYS):
        raise UsageError(f"{path} is not a trainer checkpoint")
    stored = state.pop("checksum", None)
    if stored is not None and stored != checksum(state):
        raise UsageError(unreadable.format("checksum mismatch"))
    return state


class RunFiles:
    """The files of one rank in a run folder, and the resume decision all ranks agree on."""

    def __init__(self, out_dir: str | os.PathLike, ranks: Ranks) -> None:
        self.out_dir, self.ranks = Path(out_dir), ranks
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint = self.out_dir / checkpoint_name(ranks.rank)
        self.best = self.out_dir / "best.pt"

    def save(self, state: dict[str, Any]) -> Path:
        """Atomically write ``state`` with its :func:`checksum` to this rank's checkpoint."""
        return atomic_torch_save({**state, "checksum": checksum(state)}, self.checkpoint)

    def save_snapshot(self, weights: dict[str, Any], step: int, keep: int) -> Path:
        """Write ``weights`` to ``snapshots/step{N}.pt``; keep the newest ``keep``."""
        folder = self.out_dir / "snapshots"
        folder.mkdir(exist_ok=True)
        path = atomic_torch_save(weights, folder / f"step{step:08d}.pt")
        for old in snapshot_paths(self.out_dir)[:-keep]:
            old.unlink()
        return path

    def remove_stale_temps(self) -> None:
        """Delete temp files a kill during an atomic write left behind (never read anyway)."""
        patterns = [f".{self.checkpoint.name}.*.tmp"]
        if self.ranks.rank == 0:
            patterns += [".best.pt.*.tmp", ".metrics.csv.*.tmp", "snapshots/.step*.pt.*.tmp"]
        for pattern in patterns:
            for tmp in self.out_dir.glob(pattern):
                tmp.unlink(missing_ok=True)

    def resume_state(self, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to resume from (None: start fresh), agreed on by every rank.

        Without ``resume`` an existing checkpoint on any rank is refused. With it, either no
        rank has one (fresh start) or all have readable ones from the same step; anything
        else stops every rank with a UsageError naming the file.
        """
        path, ranks = self.checkpoint, self.ranks
        if not resume:
            found = [r for r, flag in enumerate(ranks.gather(int(path.exists()))) if flag]
            if found:
                raise UsageError(f"{self.out_dir} holds a run in progress "
                                 f"({checkpoint_name(found[0])}); pass resume=True (--resume) "
                                 f"or choose another folder")
            return None
        state, error = None, None
        if path.exists():
            try:
                state = read_checkpoint(path)
            except UsageError as err:
                error = err
        code = -1 if not path.exists() else -2 if state is None else int(state["step"])
        codes = ranks.gather(code)
        names = [self.out_dir / checkpoint_name(r) for r in range(ranks.size)]
        if all(c == -1 for c in codes):
            return None
        if error is not None:
            raise error
        if -2 in codes:
            raise UsageError(f"{names[codes.index(-2)]} is not a readable checkpoint (truncated "
                             f"or corrupted); delete the run's checkpoints to start over")
        if -1 in codes:
            good = next(c for c in codes if c >= 0)
            raise UsageError(f"cannot resume: {names[codes.index(-1)]} is missing while other "
                             f"ranks' checkpoints are at step {good}; every rank needs its own")
        if min(codes) != max(codes):
            stale = codes.index(min(codes))
            raise UsageError(f"cannot resume: {names[stale]} is at step {min(codes)} but "
                             f"{names[codes.index(max(codes))]} at step {max(codes)}; the "
                             f"ranks' checkpoints must come from the same step")
        return state
