"""Short-run training (chains from noise, no replay) and the fresh-sample sampler it implies."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from imagebm.cli import main
from imagebm.compose import CompositionConfig, chain_steps
from imagebm.sample import SampleConfig, class_labels, sample_images
from imagebm.train import (
    SAMPLE_TEMPERATURE,
    chain_init,
    load_image_run,
    preset,
    short_run,
    train_images,
)
from trajebm.engine.errors import UsageError
from trajebm.engine.sampling import langevin


def test_short_run_presets_sample_with_their_training_chain():
    for name in ("digits", "dsprites-16"):
        persistent, short = preset(name), preset(f"{name}-shortrun")
        assert short == short_run(persistent)
        assert (persistent.contrastive.replay_prob, short.contrastive.replay_prob) == (0.95, 0.0)
        chain = short.sampler
        resolved = SampleConfig().resolve(short)
        assert (resolved.chunks, resolved.chunk_steps, resolved.grad_clip, resolved.reinit,
                resolved.temperature) == (1, chain.steps, chain.grad_clip, 0.0, 1.0)
        resolved = SampleConfig().resolve(persistent)
        assert (resolved.chunks, resolved.temperature) == (10, SAMPLE_TEMPERATURE)
    paper = SampleConfig.paper().resolve(preset("digits-shortrun"))
    assert (paper.chunks, paper.chunk_steps, paper.grad_clip, paper.ensemble,
            paper.temperature) == (20, 20, 0.05, 10, 1.0)


def test_fresh_samples_of_a_short_run_are_one_training_chain_from_noise(tmp_path):
    cfg = preset("digits-shortrun", steps=2, checkpoint_every=1000, snapshot_every=1000)
    cfg = short_run(replace(cfg, sampler=replace(cfg.sampler, steps=3)))
    train_images(cfg, tmp_path / "run", progress=False)
    run = load_image_run(tmp_path / "run")
    assert run.config.contrastive.replay_prob == 0.0 and run.config.eval_chunk_steps == 3
    assert chain_steps(run) == 3  # compositions of short-run runs take the same chain
    images, labels, _ = sample_images(run, SampleConfig(num=6, seed=4), progress=False)
    x = chain_init(cfg.init, (1, 8, 8))(6, None, torch.Generator().manual_seed(4))
    torch.manual_seed(4)
    expected = langevin(run.model, x, class_labels(run, 6, None), cfg.sampler)
    assert torch.equal(labels, class_labels(run, 6, None))
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)


def test_cli_short_run_flag_and_recorded_sampler(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEBM_DATA", str(tmp_path / "data"))
    run = tmp_path / "run"
    assert main(["train", "--preset", "digits", "--short-run", "--steps", "1", "--out",
                 str(run), "--quiet"]) == 0
    config = json.loads((run / "run.json").read_text())["config"]
    assert (config["contrastive"]["replay_prob"], config["eval_chunks"],
            config["eval_temperature"]) == (0.0, 1, 1.0)
    assert main(["sample", "--run", str(run), "--num", "4", "--out", str(tmp_path / "s"),
                 "--quiet"]) == 0
    recorded = json.loads((tmp_path / "s" / "run.json").read_text())["config"]
    assert (recorded["chunks"], recorded["chunk_steps"], recorded["temperature"],
            recorded["grad_clip"]) == (1, 15, 1.0, 0.01)


def test_bad_sampler_and_training_settings_are_one_line_errors():
    with pytest.raises(UsageError, match="chunk_steps"):
        SampleConfig(chunk_steps=0)
    with pytest.raises(UsageError, match="replay_prob"):
        preset("digits", replay_prob=1.5)
    with pytest.raises(UsageError, match="eval_chunks"):
        preset("digits", eval_chunks=0)
    with pytest.raises(UsageError, match="preset must be one of"):
        CompositionConfig(preset="digits")
