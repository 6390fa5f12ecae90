"""Generative replay and the EBM's continual-recipe options on split digits (tiny budgets)."""

from __future__ import annotations

import pytest
import torch

import imagebm.continual as continual
import trajebm.engine.train.objectives as objectives
from imagebm.continual import (
    LEARNERS,
    METHODS,
    VAE,
    ContinualConfig,
    EBMLearner,
    GenerativeReplayLearner,
    run_method,
)
from imagebm.continual.setup import rows_of
from imagebm.train import to_unit


def tiny(**overrides) -> ContinualConfig:
    settings = {"seeds": 1, "steps": 3, "batch_size": 16, **overrides}
    return ContinualConfig(**settings)


def task_data(setup, k):
    rows = rows_of(setup.train_labels, setup.tasks[k])
    return setup.train_images[rows], setup.train_labels[rows]


def test_every_method_has_a_learner_and_genreplay_runs_by_default():
    assert tuple(LEARNERS) == METHODS and "genreplay" in ContinualConfig().methods
    assert continual.REPLAY_METHODS == ("genreplay",)


def test_genreplay_learns_and_scores_every_class(tmp_path):
    setup = continual.load_setup(tiny(steps=30))
    learner = GenerativeReplayLearner(setup)
    assert (learner.vae.encoder[1].out_features, learner.vae.latent) == (128, 16)  # 8x8
    images, labels = task_data(setup, 0)
    x = to_unit(images[:64])
    torch.manual_seed(0)
    with torch.no_grad():
        before = float(learner.vae.loss(x))
    for k in range(2):
        learner.learn(k, *task_data(setup, k), seed=k, work=tmp_path / f"t{k}")
    torch.manual_seed(0)
    with torch.no_grad():
        assert float(learner.vae.loss(x)) < before
    logits = learner.logits(to_unit(setup.test_images[:20]))
    assert logits.shape == (20, setup.num_classes) and torch.isfinite(logits).all()
    assert learner.seen == 4 and learner.old == 4 and learner.replay_weight == 0.5


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_replayed_labels_come_from_previously_seen_classes(monkeypatch, targets):
    calls: list[tuple[int, int, torch.Tensor]] = []
    replay = GenerativeReplayLearner.replay

    def recorded(self, n, device):
        x, target = replay(self, n, device)
        assert x.shape == (n, 1, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        calls.append((self.tasks_seen, self.old, target))
        return x, target

    monkeypatch.setattr(GenerativeReplayLearner, "replay", recorded)
    setup = continual.load_setup(tiny(replay_targets=targets))
    run_method(setup, "genreplay", seed=0)
    assert sorted({k for k, _, _ in calls}) == [2, 3, 4, 5]  # none in the first task
    assert len(calls) == 4 * 3
    for k, old, target in calls:
        assert old == min(setup.tasks[k - 1]) and old == 2 * (k - 1)
        if targets == "hard":
            assert target.dtype == torch.int64 and int(target.max()) < old
        else:
            assert target.shape == (16, old)
            assert torch.allclose(target.sum(1), torch.ones(16))


def test_replayed_images_come_from_the_previous_vae_copy(monkeypatch, tmp_path):
    """Both the VAE's and the classifier's replay sample the VAE as it was after the last task,
    never the VAE being trained."""
    sampled: list[tuple[bool, bool, dict[str, torch.Tensor]]] = []
    sample = VAE.sample
    setup = continual.load_setup(tiny())
    learner = GenerativeReplayLearner(setup)

    def recorded(self, n):
        state = {k: v.clone() for k, v in self.state_dict().items()}
        sampled.append((self is learner.vae, self is learner.old_vae, state))
        return sample(self, n)

    monkeypatch.setattr(VAE, "sample", recorded)
    after: list[dict[str, torch.Tensor]] = []
    for k in range(3):
        sampled.clear()
        learner.learn(k, *task_data(setup, k), seed=k, work=tmp_path / f"t{k}")
        if k == 0:
            assert not sampled
        else:
            assert len(sampled) == 2 * 3  # the VAE's 3 steps and the classifier's 3
            for current, previous, state in sampled:
                assert previous and not current
                assert all(torch.equal(state[name], after[-1][name]) for name in state)
        after.append({name: v.clone() for name, v in learner.vae.state_dict().items()})
    assert not all(torch.equal(after[1][n], after[2][n]) for n in after[1])


def test_genreplay_reproduces_per_seed():
    setup = continual.load_setup(tiny(steps=2))
    first, again = run_method(setup, "genreplay", seed=0), run_method(setup, "genreplay", seed=0)
    assert first["curve"] == again["curve"]
    assert first["task_accuracy"] == again["task_accuracy"]


def test_ebm_negatives_seen_are_conditioned_on_every_seen_class(monkeypatch):
    """(The default, the current task's classes only, is checked in test_image_continual.)"""
    labels: list[tuple[int, set[int]]] = []
    task = [0]
    sampler = objectives.langevin
    learn = EBMLearner.learn

    def recorded_learn(self, k, *args, **kwargs):
        task[0] = k
        return learn(self, k, *args, **kwargs)

    def recorded_langevin(energy, x, cond=None, *args, **kwargs):
        labels.append((task[0], set(cond.tolist())))
        return sampler(energy, x, cond, *args, **kwargs)

    monkeypatch.setattr(EBMLearner, "learn", recorded_learn)
    monkeypatch.setattr(objectives, "langevin", recorded_langevin)
    setup = continual.load_setup(tiny(ebm_negatives="seen", ebm_loss="cd"))
    run_method(setup, "ebm", seed=0)
    for k in range(len(setup.tasks)):
        used = set().union(*(ys for t, ys in labels if t == k))
        now = set(setup.tasks[k])
        assert used <= set(range(max(now) + 1)) and (k == 0 or used - now), (k, used)


@pytest.mark.parametrize("mode", ["all", "class"])
def test_ebm_train_class_keeps_the_shared_weights(tmp_path, mode):
    setup = continual.load_setup(tiny(ebm_train=mode, ebm_loss="cd"))
    learner = EBMLearner(setup)
    learner.learn(0, *task_data(setup, 0), seed=0, work=tmp_path / "t0")
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    learner.learn(1, *task_data(setup, 1), seed=1, work=tmp_path / "t1")
    after = dict(learner.model.named_parameters())
    per_class = {n for n in before if n.endswith(("in_bias", "out_gain"))}
    assert per_class and len(per_class) < len(before)
    shared_same = all(torch.equal(before[n], after[n]) for n in before if n not in per_class)
    assert shared_same == (mode == "class")
    for n in per_class:  # the old task's rows never move; the new task's do
        assert torch.equal(before[n][:2], after[n][:2]), n
    assert any(not torch.equal(before[n][2:4], after[n][2:4]) for n in per_class)


def test_width_sets_every_methods_backbone():
    setup = continual.load_setup(tiny(width=8))
    assert setup.model_config.width == 8
    assert ContinualConfig().image_config().model.width == 16
