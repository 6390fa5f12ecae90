"""Image presets as one registry: overrides, spec strings, `imagebm presets`, old run files."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from imagebm.cli import main
from imagebm.presets import (
    PRESETS,
    ImageTrainConfig,
    config_from_record,
    migrate_record,
    preset,
    short_run,
)
from imagebm.train import load_image_run
from trajebm.engine.errors import UsageError
from trajebm.engine.sampling import LangevinConfig
from trajebm.engine.train import TrainConfig

LEGACY_RUN = Path(__file__).parent / "fixtures" / "legacy" / "digits"


def test_every_old_preset_key_still_works():
    cfg = preset("digits", steps=7, lr=2e-3, seed=3, batch_size=32, conditional=False,
                 log_every=2, buffer_size=500, replay_prob=0.5, alpha=0.3, compile=False)
    assert (cfg.train.steps, cfg.train.lr, cfg.train.seed, cfg.train.log_every) == (
        7, 2e-3, 3, 2)
    assert (cfg.batch_size, cfg.conditional) == (32, False)
    assert (cfg.contrastive.buffer_size, cfg.contrastive.replay_prob, cfg.contrastive.alpha) == (
        500, 0.5, 0.3)
    assert cfg.sampler.steps == 15  # `steps` is the training steps, not the chain's
    chain = LangevinConfig(steps=4, step_size=3.0)
    whole = preset("digits", log_every=2, train=TrainConfig(steps=9), sampler=chain)
    assert (whole.train.steps, whole.train.log_every, whole.sampler) == (9, 2, chain)
    keys = preset("digits", **{"sampler.steps": 6, "model.width": 8}, sampler_noise=0.01)
    assert (keys.sampler.steps, keys.model.width, keys.sampler.noise) == (6, 8, 0.01)
    assert preset("digits", short_run=True) == short_run(preset("digits"))


def test_spec_strings_name_a_preset_and_change_it():
    cfg = PRESETS.spec("digits:lr=0.003,sampler.steps=7,replay_prob=0,short_run=true")
    assert (cfg.train.lr, cfg.sampler.steps, cfg.contrastive.replay_prob) == (0.003, 7, 0.0)
    assert cfg.eval_chunk_steps == 7  # short_run applied after the chain's change
    assert PRESETS.spec("dsprites-16") == preset("dsprites-16")
    for bad, message in (("digits:lr", "expected key=value"), ("digits:nosuch=1", "unknown"),
                         ("nope:lr=1", "unknown preset"), ("digits:replay_prob=2", "replay_prob")):
        with pytest.raises(UsageError, match=message):
            PRESETS.spec(bad)


def test_presets_command_lists_every_preset_with_its_differences(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert f"\n{name}\n" in out
    described = PRESETS.describe()
    assert described["digits"]["train.steps"] == 1500
    assert described["digits-shortrun"]["contrastive.replay_prob"] == 0.0
    assert "sampler.steps=15" in out and "contrastive.replay_prob=0.0" in out
    assert ImageTrainConfig() == PRESETS.default()


def test_cli_train_takes_a_spec_and_rejects_bad_ones_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "digits:sampler.steps=2,width=8,lr=0.002", "--steps", "1",
                 "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "run.json").read_text())["config"]
    assert (config["sampler"]["steps"], config["model"]["width"]) == (2, 8)
    assert (config["train"]["lr"], config["train"]["steps"]) == (0.002, 1)
    capsys.readouterr()
    for spec in ("digits:lr", "digits:nosuch=1", "digits:steps=-1", "digits:init=gauss"):
        assert main(["train", "--preset", spec, "--out", str(tmp_path / "n"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("imagebm: error:") and err.count("\n") == 1, spec
    assert not (tmp_path / "n").exists()


def test_an_old_run_record_is_migrated_when_read():
    record = json.loads((LEGACY_RUN / "run.json").read_text())["config"]
    assert "sampler" in record["train"] and "buffer_size" in record  # the old layout
    cfg = config_from_record(record, "run.json")
    assert cfg.sampler == LangevinConfig(steps=3, step_size=10.0, noise=0.005, grad_clip=0.01)
    assert (cfg.contrastive.buffer_size, cfg.contrastive.replay_prob) == (10_000, 0.95)
    assert (cfg.contrastive.alpha, cfg.contrastive.negatives_cond) == (1.0, "data")
    assert (cfg.train.steps, cfg.train.lr, cfg.train.log_every) == (4, 1e-3, 1)
    assert migrate_record(asdict(cfg)) == asdict(cfg)  # today's layout is left alone
    compiled = {**record, "train": {**record["train"], "compile": "reduce-overhead"}}
    assert config_from_record(compiled, "x").sampler.compile == "reduce-overhead"
    assert load_image_run(LEGACY_RUN).config == cfg


def test_an_unreadable_run_config_is_one_line(tmp_path):
    run = tmp_path / "digits"
    shutil.copytree(LEGACY_RUN, run)
    record = torch.load(run / "model.pt", weights_only=True)
    record["config"]["train"]["no_such_setting"] = 1
    torch.save(record, run / "model.pt")
    with pytest.raises(UsageError, match="model.pt: unusable run config") as err:
        load_image_run(run)
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="written by an older imagebm"):
        config_from_record({"dataset": "digits"}, "flat.json")
