"""The `imagebm` command line: old flags keep working beside the new names, help comes from
the configs' field docstrings, and no library module parses a command line."""

from __future__ import annotations

import pytest

from imagebm.cli import build_parser, main
from imagebm.compose import ComposeConfig
from imagebm.restore import RestoreConfig
from imagebm.sample import SampleConfig
from trajebm.engine.settings import field_docs

COMMON = {"restore": ["--run", "r", "--task", "inpaint", "--out", "o"],
          "compose": ["--runs", "a", "--labels", "0", "--out", "o"],
          "compose-experiment": ["--out", "o"],
          "likelihood": ["--run", "r", "--out", "o"],
          "robustness": ["--run", "r", "--norm", "linf", "--eps", "0.1", "--out", "o"]}


@pytest.mark.parametrize("command, old, new, dest", [
    ("restore", "--steps", "--langevin-steps", "langevin_steps"),
    ("compose", "--steps", "--langevin-steps", "langevin_steps"),
    ("compose-experiment", "--chain-steps", "--langevin-steps", "langevin_steps"),
    ("likelihood", "--steps", "--ais-steps", "ais_steps"),
    ("robustness", "--steps", "--pgd-steps", "pgd_steps"),
])
def test_old_flags_are_second_names_of_the_new_ones(command, old, new, dest):
    parser = build_parser()
    for flag in (old, new):
        args = parser.parse_args([command, *COMMON[command], flag, "7"])
        assert getattr(args, dest) == 7, flag


def test_training_steps_keep_their_flag():
    args = build_parser().parse_args(["compose-experiment", "--out", "o", "--steps", "9"])
    assert (args.steps, args.langevin_steps) == (9, None)


def test_help_is_the_config_fields_docstrings(capsys):
    for command, cls, field in (("sample", SampleConfig, "chunks"),
                                ("restore", RestoreConfig, "chains"),
                                ("compose", ComposeConfig, "temperature")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert field_docs(cls)[field].split(" (")[0].rstrip(".") in text, (command, field)


@pytest.mark.parametrize("argv, message", [
    (["sample", "--run", "nowhere", "--out", "o", "--chunk-steps", "0"], "chunk_steps"),
    (["likelihood", "--run", "nowhere", "--out", "o", "--ais-steps", "5", "--num", "0"],
     "num must be positive"),
    (["compose", "--runs", "a", "--labels", "0", "--out", "o", "--langevin-steps", "0"],
     "langevin_steps must be >= 1"),
    (["robustness", "--run", "nowhere", "--norm", "l3", "--eps", "0.1", "--out", "o"], "norm"),
])
def test_bad_settings_are_one_line_errors_before_any_work(argv, message, capsys, tmp_path,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("imagebm: error:") and err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []
