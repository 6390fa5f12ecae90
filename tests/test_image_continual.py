"""Class-incremental continual learning on split digits (tiny budgets)."""

from __future__ import annotations

import json

import pytest
import torch

import imagebm.continual as continual
import imagebm.continual.setup as continual_setup
import trajebm.engine.train as engine_train
import trajebm.engine.train.objectives as objectives
from imagebm.cli import main
from imagebm.continual import (
    METHODS,
    RESULT_FILE,
    ContinualConfig,
    run_continual,
    run_method,
    split_tasks,
)
from trajebm.engine.errors import UsageError


def tiny(**overrides) -> ContinualConfig:
    settings = {"seeds": 1, "steps": 2, "batch_size": 16, "fisher_samples": 8, **overrides}
    return ContinualConfig(**settings)


def test_split_by_class_id():
    assert split_tasks(10, 2) == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert split_tasks(10, 4) == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    with pytest.raises(UsageError, match="classes_per_task"):
        split_tasks(10, 11)


@pytest.mark.parametrize("bad", [{"methods": ("ebm", "mas")}, {"methods": ()}, {"seeds": 0},
                                 {"preset": "cifar10"}, {"ebm_loss": "nce"}, {"steps": 0},
                                 {"methods": ("ewc", "ewc")}, {"ewc_gamma": 2.0},
                                 {"ebm_negatives": "all"}, {"ebm_train": "gains"},
                                 {"replay_targets": "logits"}, {"vae_steps": 0},
                                 {"vae_hidden": 0}, {"vae_latent": -1}, {"width": 0}])
def test_config_rejects_bad_settings(bad):
    with pytest.raises(UsageError):
        ContinualConfig(**bad)


def test_no_task_is_seen_before_its_turn(monkeypatch):
    """Every batch (and every EBM negative's label) comes from the current task's classes."""
    events: list[tuple[str, set[int]]] = []

    class Recorded(engine_train.TensorBatches):
        def __init__(self, x, cond=None, *args, **kwargs):
            events.append(("task", set(cond.tolist())))
            super().__init__(x, cond, *args, **kwargs)

        def __next__(self):
            x, cond = super().__next__()
            events.append(("batch", set(cond.tolist())))
            return x, cond

    sampler = objectives.langevin

    def recorded_langevin(energy, x, cond=None, *args, **kwargs):
        events.append(("negatives", set(cond.tolist())))
        return sampler(energy, x, cond, *args, **kwargs)

    monkeypatch.setattr(continual_setup, "TensorBatches", Recorded)
    monkeypatch.setattr(objectives, "langevin", recorded_langevin)
    cfg = tiny(steps=3)
    setup = continual.load_setup(cfg)
    for method in ("ebm", "finetune", "lwf", "joint"):
        events.clear()
        run_method(setup, method, seed=0)
        task = -1
        for kind, labels in events:
            task += kind == "task"
            now = set(setup.tasks[task])
            allowed = set(range(max(now) + 1)) if method == "joint" else now
            assert labels <= allowed, (method, task, kind, labels)
            if kind == "task":
                assert labels == allowed, (method, task)
        assert task == len(setup.tasks) - 1
        kinds = {kind for kind, _ in events}
        assert ("negatives" in kinds) == (method == "ebm")


def test_every_method_writes_the_report(tmp_path):
    out = tmp_path / "cl"
    report = run_continual(tiny(seeds=2, methods=METHODS), out, progress=False)
    saved = json.loads((out / RESULT_FILE).read_text())
    assert saved["complete"] and saved["tasks"] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert set(saved["methods"]) == set(METHODS) == set(report["methods"])
    assert {"ebm", "ewc", "si", "lwf"} <= set(saved["paper"])
    for method, entry in saved["methods"].items():
        final, curve = entry["final_accuracy"], entry["curve"]
        assert len(final["per_seed"]) == 2 and final["std"] >= 0, method
        assert [c[-1] for c in curve["per_seed"]] == final["per_seed"], method
        assert len(curve["mean"]) == len(curve["std"]) == 5, method
        assert all(0.0 <= a <= 1.0 for c in curve["per_seed"] for a in c), method
        assert [len(row) for row in entry["task_accuracy"][0]] == [1, 2, 3, 4, 5], method
    assert saved["config"]["seeds"] == 2
    assert (out / "continual.png").stat().st_size > 0
    markdown = (out / "continual.md").read_text()
    assert "| ebm |" in markdown and "| genreplay (replay) | " in markdown
    assert "generative replay (VAE) (not run)" not in markdown and "| 40.04 ± 1.31 |" in markdown
    assert [m for m, e in saved["methods"].items() if e["replay"]] == ["genreplay"]
    assert json.loads((out / "run.json").read_text())["config"]["steps"] == 2
    with pytest.raises(UsageError, match="already holds"):
        run_continual(tiny(methods=("finetune",)), out, progress=False)


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["continual", "--preset", "digits", "--methods", "ebm", "finetune", "--seeds",
                 "1", "--steps", "2", "--batch-size", "16", "--ebm-loss", "cd", "--out",
                 str(out), "--quiet", "--ebm-negatives", "seen", "--ebm-train", "class",
                 "--width", "8"])
    assert code == 0
    saved = json.loads((out / RESULT_FILE).read_text())
    assert saved["config"]["ebm_loss"] == "cd" and list(saved["methods"]) == ["ebm", "finetune"]
    assert (saved["config"]["ebm_negatives"], saved["config"]["ebm_train"]) == ("seen", "class")
    assert json.loads((out / "run.json").read_text())["preset"]["model"]["width"] == 8
    assert "final accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--methods", "ebm", "replay"], ["--seeds", "0"],
                                  ["--preset", "cifar10"], ["--steps", "-1"],
                                  ["--ebm-negatives", "old"], ["--ebm-train", "head"],
                                  ["--replay-targets", "mixed"], ["--vae-steps", "0"],
                                  ["--width", "0"]])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args):
    out = tmp_path / "never"
    assert main(["continual", "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imagebm: error:") and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_finetune_forgets_and_joint_does_not():
    """Fine-tuning predicts only the newest task's classes; training on everything does not."""
    torch.set_num_threads(1)
    setup = continual.load_setup(tiny(steps=60, batch_size=32))
    finetune = run_method(setup, "finetune", seed=0)
    joint = run_method(setup, "joint", seed=0)
    assert finetune["curve"][0] > 0.85
    assert max(finetune["task_accuracy"][-1][:-1]) < 0.05
    assert finetune["task_accuracy"][-1][-1] > 0.6
    assert min(joint["task_accuracy"][-1]) > 0.2
    assert joint["curve"][-1] > finetune["curve"][-1] + 0.2
