"""Fault injection on the trainer: kill -9 (at random moments and mid-checkpoint-write), damaged
checkpoints, a NaN gradient, a full disk, and DDP on two gloo ranks (gradient averaging, a
missing or stale checkpoint on resume). The runs live in tests/_fault_worker.py."""

import csv
import errno
import os
import queue
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import _fault_worker as worker
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from trajebm.engine.errors import UsageError
from trajebm.engine.train import read_checkpoint

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and kill -9")

WORKER = Path(__file__).with_name("_fault_worker.py")
STEPS = 24


def unbroken(out, steps=STEPS):
    """The reference run, in this process on one thread like the workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = worker.ebm_trainer(out, steps)
        trainer.fit()
        return trainer
    finally:
        torch.set_num_threads(threads)


def run_worker(out, *args, until=None, delay=0.0, timeout=120):
    """Run the worker script; with ``until`` kill -9 it ``delay`` s after it prints that line."""
    proc = subprocess.Popen([sys.executable, str(WORKER), str(out), str(STEPS), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            if line.strip() == until:
                time.sleep(delay)
                proc.kill()
                break
        proc.wait()
    finally:
        watchdog.cancel()
    if until is None:
        assert proc.returncode == 0, proc.stderr.read()
    else:
        assert proc.returncode == -9, f"worker ended before {until!r}: {proc.stderr.read()}"


def assert_same(a, b, where="state"):
    """Nested states equal bit for bit (tensors, arrays, numbers, containers)."""
    if torch.is_tensor(a):
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def logged(folder):
    with open(folder / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "sec_per_step"} for r in csv.DictReader(f)]


def assert_equals_unbroken(run, ref):
    assert_same(read_checkpoint(ref / "checkpoint.pt"), read_checkpoint(run / "checkpoint.pt"))
    assert_same(torch.load(ref / "best.pt"), torch.load(run / "best.pt"))
    assert logged(run) == logged(ref)
    assert not list(run.glob(".*.tmp"))


def test_kill_9_at_random_moments_and_mid_write_then_resume_equals_unbroken(tmp_path):
    unbroken(tmp_path / "ref")
    run = tmp_path / "run"
    rng = random.Random(2024)
    moments = [2 + 5 * i + rng.randrange(3) for i in range(3)]  # apart: each run gets there
    for step in moments:  # 0-30 ms into the step: its wait, chain, update, log or checkpoint
        run_worker(run, "--pace", "0.01", until=f"step {step}", delay=rng.uniform(0, 0.03))
    run_worker(run, "--block-checkpoint-at", "18", until="writing")
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 15  # the good one is kept
    assert len(list(run.glob(".checkpoint.pt.*.tmp"))) == 1  # the half-written temp file
    run_worker(run)
    assert_equals_unbroken(run, tmp_path / "ref")


def test_a_damaged_checkpoint_stops_resume_with_one_line_naming_it(tmp_path):
    worker.ebm_trainer(tmp_path, 6).fit()
    path = tmp_path / "checkpoint.pt"
    raw = path.read_bytes()
    flipped = bytearray(raw)
    flipped[len(raw) // 2 : len(raw) // 2 + 8] = bytes(8)  # inside tensor data
    for damaged in (raw[: len(raw) // 2], bytes(flipped)):
        path.write_bytes(damaged)
        with pytest.raises(UsageError) as err:
            worker.ebm_trainer(tmp_path, 12).fit(resume=True)
        message = str(err.value)
        assert message.startswith(f"{path} is not a readable checkpoint (truncated or corrupted")
        assert "\n" not in message


def test_a_nan_gradient_rolls_back_reseeds_and_finishes(tmp_path):
    trainer = worker.ebm_trainer(tmp_path, 12)
    fired = []

    def poison(grad):  # step 9's update, which is also a checkpoint step
        if trainer.step == 8 and not fired:
            fired.append(True)
            return grad * float("nan")
        return grad

    trainer.model.net[0].weight.register_hook(poison)
    summary = trainer.fit()
    assert fired and summary["step"] == 12 and summary["rollbacks"] == 1
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert all(torch.isfinite(v).all() for v in trainer.ema_state_dict().values())
    events = (tmp_path / "events.log").read_text()
    assert "non-finite gradient in net.0.weight" in events
    assert "restored step 6, reseeded" in events
    assert [int(r["step"]) for r in logged(tmp_path)] == list(range(1, 13))


def test_a_full_disk_fails_clearly_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    worker.ebm_trainer(run, 5).fit()  # ends on a validation step, as the unbroken run has
    before = (run / "checkpoint.pt").read_bytes()
    real_write, room = os.write, [4096]

    def full_disk(fd, data):  # 4 KiB left: a longer write stops part-way with ENOSPC
        if len(data) > room[0]:
            real_write(fd, bytes(data[: room[0]]))
            room[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        room[0] -= len(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(UsageError, match="no space left on the device") as err:
        worker.ebm_trainer(run, STEPS).fit(resume=True)
    assert str(err.value).startswith(f"{run / 'checkpoint.pt'}: ")
    assert "\n" not in str(err.value)
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not list(run.glob(".*.tmp"))
    monkeypatch.undo()  # space freed: the run resumes and ends as if nothing happened
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        worker.ebm_trainer(run, STEPS).fit(resume=True)
    finally:
        torch.set_num_threads(threads)
    unbroken(tmp_path / "ref")
    assert_equals_unbroken(run, tmp_path / "ref")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_on_two_gloo_ranks_averages_gradients_and_refuses_mismatched_resume(tmp_path):
    results = {}
    messages = mp.get_context("spawn").Queue()
    ctx = mp.start_processes(worker.ddp_worker, args=(2, free_port(), str(tmp_path), messages),
                             nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 150
    while len(results) < 8 or not ctx.join(timeout=0.1):
        if time.monotonic() > deadline:  # a hang fails the test instead of freezing the suite
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"DDP workers hung; got {sorted(results)}")
        try:
            name, rank, value = messages.get(timeout=0.5)
            results[name, rank] = value
        except queue.Empty:
            pass
    # supervised: two ranks of 8 rows each == one rank with both (gradients averaged)
    single = worker.regression_trainer(tmp_path / "single", 6, 16)
    single.fit()
    assert np.array_equal(results["regression", 0], results["regression", 1])
    np.testing.assert_allclose(results["regression", 0], worker.flat(single.model), atol=1e-6)
    # EBM: one set of weights, but each rank its own buffer seed, data order and negatives
    (p0, buf0, gen0, perm0), (p1, buf1, gen1, perm1) = results["ebm", 0], results["ebm", 1]
    assert np.array_equal(p0, p1)
    assert not np.array_equal(gen0, gen1) and not np.array_equal(perm0, perm1)
    assert not np.array_equal(buf0, buf1)
    assert (tmp_path / "ebm" / "checkpoint.pt").exists()
    assert (tmp_path / "ebm" / "checkpoint.rank1.pt").exists()
    rank1 = tmp_path / "ebm" / "checkpoint.rank1.pt"
    for rank in (0, 1):  # both ranks stop with the same clear error
        assert f"{rank1} is missing while other ranks' checkpoints are at step 6" in results[
            "missing", rank]
        assert f"{rank1} is at step 3 but" in results["stale", rank]
