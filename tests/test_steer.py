"""`trajebm steer`: goal reach rates and the physics cost of steering, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _traj_fixtures import small_dataset, trained

from trajebm.cli import main
from trajebm.engine.errors import UsageError
from trajebm.steer import SteerConfig, reached, steer


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


def test_reach_rules():
    target = np.array([1.0, 1.0])
    final = np.array([[1.004, 0.99], [1.2, 1.0]])
    assert reached("lift", final, target, 0.005).tolist() == [[True, False], [False, True]]
    assert reached("hold", final, target, 0.005).tolist() == [[True, False], [True, True]]


def test_steering_report_lifts_the_object_and_measures_the_cost(root, tmp_path, capsys):
    trained(root, "ebm")
    run, data = root / "runs" / "ebm-30", small_dataset(root)
    cfg = SteerConfig(horizon=5, samples=2, weight=0.5, physics_episodes=2, physics_every=2,
                      progress=False)
    report = steer([run], data, tmp_path / "s", cfg)
    saved = json.loads((tmp_path / "s" / "steer.json").read_text())
    result = saved["models"][str(run)]
    for goal in ("lift", "hold"):
        g = result["goals"][goal]
        assert all(0.0 <= g[k] <= 1.0 for k in ("truth", "unsteered", "steered"))
        assert g["physics_steered"] > 0
    heights = result["height_change"]
    assert heights["lift"][-1] > heights["unsteered"][-1] + 0.005  # pulled up, in metres
    assert [r["goal"] for r in report["summary"]] == ["lift", "hold"]
    assert (tmp_path / "s" / "heights.png").stat().st_size > 0
    assert "| lift |" in (tmp_path / "s" / "steer.md").read_text()
    status = main(["steer", "--models", str(run), "--data", str(data), "--out",
                   str(tmp_path / "cli"), "--horizon", "3", "--samples", "1", "--quiet"])
    assert status == 0 and "physics error steered" in capsys.readouterr().out


def test_steering_needs_energy_models(root, tmp_path, capsys):
    trained(root, "fc")
    with pytest.raises(UsageError, match="has none"):
        steer([root / "runs" / "fc-30"], small_dataset(root), tmp_path / "x")
    with pytest.raises(UsageError, match="positive"):
        SteerConfig(weight=0)
    status = main(["steer", "--models", str(tmp_path / "none"), "--data",
                   str(small_dataset(root)), "--out", str(tmp_path / "y")])
    assert status == 2 and "no such model" in capsys.readouterr().err


def test_a_horizon_longer_than_the_data_is_cut_with_a_warning(root, tmp_path):
    trained(root, "ebm")
    cfg = SteerConfig(horizon=500, samples=1, physics_episodes=1, progress=False)
    with pytest.warns(UserWarning, match="predicting 13 steps"):
        report = steer([root / "runs" / "ebm-30"], small_dataset(root), tmp_path / "s", cfg)
    result = next(iter(report["models"].values()))
    assert len(result["height_change"]["truth"]) == 13
