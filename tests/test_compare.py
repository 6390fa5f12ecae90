"""`trajebm compare`: variants x seeds, medians with intervals, resume, variant specs, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from _traj_fixtures import small_dataset

from trajebm.cli import main
from trajebm.compare import CompareConfig, parse_base, run_config, slug
from trajebm.engine.errors import UsageError
from trajebm.variants import variant_config

BASE = ("ebm:steps=6,hidden=16,layers=1,members=2,batch_size=32,warmup_steps=1,"
        "validate_every=0,sampler_steps=3,test_fraction=0.2")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


def run(data, out, *extra):
    return main(["compare", "--data", str(data), "--out", str(out), "--base", BASE,
                 "--horizon", "5", "--samples", "2", "--resamples", "50", "--quiet", *extra])


def test_compare_writes_summary_table_and_figure_and_resumes(root, tmp_path, capsys):
    data = small_dataset(root)
    out = tmp_path / "cmp"
    models = ["ebm", "fc", "fc-paper", "ensemble:context_noise=0.1"]
    assert run(data, out, "--models", *models, "--seeds", "2") == 0
    assert "train vs test (floor)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["variants"]) == models and summary["seeds"] == 2
    for spec, entry in summary["variants"].items():
        for key in ("fd@5", "hand fd@5", "object fd@5", "mse"):
            cell = entry[key]
            assert cell["low"] <= cell["value"] <= cell["high"], (spec, key)
        assert len(entry["fd@5"]["per_seed"]) == 2
        assert entry["physics_error"] is not None
        assert len(entry["band"]["median"]) == len(summary["band_steps"])
    poi = summary["probability_of_improvement"]
    assert poi["ebm"]["fc"]["value"] + poi["fc"]["ebm"]["value"] == pytest.approx(1.0)
    table = (out / "summary.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ensemble:context_noise")]
    assert len(rows) == 2 and "train vs test" in table  # the medians and the P(improvement)
    assert (out / "fd.png").stat().st_size > 0
    seed1 = out / slug("fc") / "seed1"
    trained_at = (seed1 / "model.pt").stat().st_mtime_ns
    shutil.rmtree(out / slug("ebm") / "seed0")
    assert run(data, out, "--models", *models, "--seeds", "2") == 2
    assert "already holds a comparison" in capsys.readouterr().err
    plan = (out / "compare.json").read_bytes()
    assert run(data, out, "--models", *models, "--seeds", "2", "--resume",
               "--horizon", "4") == 2
    assert "started with other settings (eval.horizon)" in capsys.readouterr().err
    assert (out / "compare.json").read_bytes() == plan
    assert run(data, out, "--models", *models, "--seeds", "2", "--resume") == 0
    assert (seed1 / "model.pt").stat().st_mtime_ns == trained_at
    assert (out / slug("ebm") / "seed0" / "eval.npz").is_file()
    again = json.loads((out / "summary.json").read_text())
    assert again["variants"]["fc"]["fd@5"] == summary["variants"]["fc"]["fd@5"]


@pytest.mark.parametrize("args, message", [
    (["--models", "gan"], "unknown model 'gan'"),
    (["--models", "ebm:warp=9"], "unknown setting 'warp'"),
    (["--models", "ebm:steps"], "expected key=value"),
    (["--models", "fc", "--seeds", "0"], "seeds must be positive"),
    (["--models", "fc", "fc"], "named once"),
])
def test_bad_input_is_one_line_and_status_2(root, tmp_path, capsys, args, message):
    assert run(small_dataset(root), tmp_path / "bad", *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_a_dataset_without_a_test_split_is_refused(root, tmp_path, capsys):
    status = main(["compare", "--data", str(small_dataset(root)), "--out", str(tmp_path / "x"),
                   "--models", "fc", "--base", "fc:test_fraction=0", "--quiet"])
    assert status == 2 and "test split" in capsys.readouterr().err


def test_variant_specs_reach_every_level_of_the_config():
    cfg = variant_config("ebm:segment=4,context_noise=0.05,steps=123,beta1=0,"
                         "sampler_steps=7,spectral_norm=true,ema_decay=0.99")
    assert cfg.model.segment == 4 and cfg.model.spectral_norm is True
    assert cfg.context_noise == 0.05 and cfg.train.steps == 123
    assert cfg.train.betas == (0.0, 0.999) and cfg.train.ema_decay == 0.99
    assert cfg.model.sampler.steps == 7
    paper = variant_config("ebm-paper")
    assert paper.batch_size == 1024 and paper.model.delta_input is False
    assert variant_config("fc-paper").model.residual is False
    assert variant_config("ebm-uncond").model.conditional is False
    with pytest.warns(UserWarning, match="segment does not apply to this model; ignored"):
        assert variant_config("fc:segment=2") == variant_config("fc")


def test_variant_folders_are_safe_names():
    assert slug("ebm:a=1,b=0.5") == "ebm__a-1_b-0.5"
    with pytest.raises(UsageError):
        slug("ebm:a=../x")


def test_base_settings_are_a_dict_every_variant_starts_from():
    assert parse_base("steps=6,hidden=16") == {"steps": 6, "hidden": 16}
    assert parse_base("ebm:steps=6,test_fraction=0.2") == {"steps": 6, "test_fraction": 0.2}
    assert parse_base("fc") == {}
    with pytest.raises(UsageError, match="unknown model 'gan'"):
        parse_base("gan:steps=3")
    with pytest.raises(UsageError, match="expected key=value"):
        parse_base("steps=1,hidden")
    with pytest.raises(UsageError, match="unknown model 'steps'"):
        parse_base("steps")
    cfg = CompareConfig(base="steps=6,hidden=16,test_fraction=0.2")
    assert cfg.base == {"steps": 6, "hidden": 16, "test_fraction": 0.2}
    for spec in ("fc", "ebm:hidden=8"):
        run = run_config(spec, 3, cfg)
        assert run.train.steps == 6 and run.test_fraction == 0.2 and run.train.seed == 3
        assert run.model.hidden == (8 if ":" in spec else 16)
        assert run.train.progress is False  # the evaluation's progress setting


def test_a_horizon_longer_than_the_data_is_cut_with_a_warning(root, tmp_path):
    from trajebm.compare import compare

    cfg = CompareConfig(seeds=1, base=BASE.partition(":")[2] + ",steps=2", resamples=20,
                        band_resamples=10)
    cfg.eval.horizon, cfg.eval.samples = 500, 1
    with pytest.warns(UserWarning, match="predicting 13 steps"):
        summary = compare(small_dataset(root), ["fc"], tmp_path / "cmp", cfg)
    assert summary["horizon"] == 13
