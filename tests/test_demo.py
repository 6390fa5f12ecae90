"""`trajebm demo` end to end on a tiny setting (and its resume)."""

from __future__ import annotations

import json

from trajebm.cli import build_parser, main
from trajebm.demo import MODELS, DemoConfig, run_demo


def test_demo_writes_under_runs_by_default():
    args = build_parser().parse_args(["demo"])
    assert args.out == "runs/demo" and args.episodes == DemoConfig().episodes


def test_demo_end_to_end_tiny(tmp_path, capsys):
    cfg = DemoConfig(episodes=20, length=12, ebm_steps=4, baseline_steps=6, batch_size=32,
                     samples=2, workers=2, progress=False)
    report = run_demo(tmp_path / "demo", cfg)
    out = tmp_path / "demo" / "report"
    assert {"README.md", "metrics.json", "fd.png", "coordinates.png", "frames.png",
            "rollouts.mp4", "run.json"} <= {p.name for p in out.iterdir()}
    assert report["video"] is None
    import imageio.v3 as iio

    video = iio.imread(out / "rollouts.mp4")
    assert video.shape[0] == report["horizon"]
    assert video.shape[2] == 6 * video.shape[1]  # truth + 5 models
    text = (out / "README.md").read_text()
    assert "rollouts.mp4" in text
    for name in (*MODELS, "train vs test", "fd@96"):
        assert name in text
    assert set(json.loads((out / "metrics.json").read_text())["models"]) == set(MODELS)
    assert report["timings"]["total"] > 0 and report["dataset_id"] == "trajebm/hand-demo-v0"
    status = main(["demo", "--out", str(tmp_path / "demo"), "--episodes", "20", "--length",
                   "12", "--ebm-steps", "4", "--baseline-steps", "6", "--samples", "2",
                   "--no-render", "--quiet"])
    assert status == 0 and "ebm-uncond" in capsys.readouterr().out
    status = main(["demo", "--out", str(tmp_path / "d2"), "--episodes", "5", "--quiet"])
    assert status == 2
