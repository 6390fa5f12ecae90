"""Thread defaults that do not oversubscribe: cores / local processes, passive OpenMP waits,
and the overrides (--threads, TRAJEBM_THREADS, OMP_NUM_THREADS, OMP_WAIT_POLICY)."""

import os
import subprocess
import sys

import pytest
import torch

from trajebm.cli import main
from trajebm.engine import threads
from trajebm.engine.threads import THREADS_ENV, configure_threads, default_threads


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


def test_default_is_cores_per_local_process(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    assert default_threads() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert default_threads() == 1
    assert configure_threads() == 1 and torch.get_num_threads() == 1


def test_overrides_win_in_order(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert configure_threads() == 1  # the user's OMP_NUM_THREADS, as torch applied it
    monkeypatch.setenv(THREADS_ENV, "2")
    assert configure_threads() == 2 and torch.get_num_threads() == 2
    assert configure_threads(1) == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=THREADS_ENV):
        configure_threads()


def test_command_line_option_is_checked_before_the_command_runs(tmp_path, capsys):
    code = main(["--threads", "0", "toy", "--density", "8gaussians", "--out", str(tmp_path / "r")])
    assert code == 2 and "threads must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_import_makes_openmp_waits_passive_unless_set(preset, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    code = "import os, trajebm; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == expected
