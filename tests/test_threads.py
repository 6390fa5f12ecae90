"""Thread defaults that do not oversubscribe (one per process) and their overrides
(--threads, TRAJEBM_THREADS, OMP_NUM_THREADS)."""

import pytest
import torch

from trajebm.cli import main
from trajebm.engine.threads import DEFAULT_THREADS, THREADS_ENV, configure_threads


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


def test_the_default_is_one_thread_per_process():
    torch.set_num_threads(2)
    assert configure_threads() == DEFAULT_THREADS == torch.get_num_threads() == 1


def test_overrides_win_in_order(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert configure_threads() == 2  # the user's OMP_NUM_THREADS, as torch applied it
    monkeypatch.setenv(THREADS_ENV, "1")
    assert configure_threads() == 1 and torch.get_num_threads() == 1
    assert configure_threads(2) == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=THREADS_ENV):
        configure_threads()


def test_command_line_option_is_checked_before_the_command_runs(tmp_path, capsys):
    code = main(["--threads", "0", "toy", "--density", "8gaussians", "--out", str(tmp_path / "r")])
    assert code == 2 and "threads must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
