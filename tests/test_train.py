"""Trainer: loss and clip, KL term, exact resume, rollback and guards, eval-mode chains, EMA,
validation and best-checkpoint selection. Fault injection and DDP: tests/test_faults.py."""

import copy
import csv
import random
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from trajebm.engine.buffer import ReplayBuffer, uniform_init
from trajebm.engine.errors import UsageError
from trajebm.engine.sampling import LangevinConfig, langevin
from trajebm.engine.train import (
    Contrastive,
    ContrastiveConfig,
    Supervised,
    TensorBatches,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    cd_loss,
    clip_to_adam_bound,
    snapshot_paths,
)

SAMPLER = LangevinConfig(steps=5, step_size=0.05, convention="textbook", grad_clip=None,
                         bounds=None)


class Energy(nn.Module):
    def __init__(self, dim=2, cond_dim=0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + cond_dim, 32), nn.SiLU(), nn.Linear(32, 1))

    def forward(self, x, cond=None):
        inp = x if cond is None else torch.cat([x, cond], 1)
        return self.net(inp).squeeze(-1)


CONTRASTIVE = {f for f in ContrastiveConfig.__dataclass_fields__}


def make_trainer(out, steps=12, model=None, seed=0, spread=0.5, validate=None, sampler=SAMPLER,
                 **cfg):
    """A contrastive run on 2-D data; ``cfg`` holds TrainConfig and ContrastiveConfig fields."""
    torch.manual_seed(seed)
    model = model or Energy()
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(5)) * spread + 1.0
    settings = dict(steps=steps, lr=1e-2, checkpoint_every=4, log_every=2, progress=False,
                    seed=seed)
    config = TrainConfig(**{**settings, **{k: v for k, v in cfg.items() if k not in CONTRASTIVE}})
    contrastive = ContrastiveConfig(**{k: v for k, v in cfg.items() if k in CONTRASTIVE})
    buffer = ReplayBuffer(200, (2,), uniform_init(-2, 2, (2,)), seed=seed)
    return Trainer(model, TensorBatches(data, batch_size=32, seed=seed),
                   Contrastive(model, sampler, buffer, contrastive), config, out,
                   validate=validate)


def params(model):
    return [p.detach().clone() for p in model.state_dict().values()]


def test_cd_loss_matches_formula():
    e_pos, e_neg = torch.tensor([1.0, 3.0]), torch.tensor([0.0, -2.0])
    loss, penalty = cd_loss(e_pos, e_neg, alpha=0.5)
    assert penalty.item() == pytest.approx(5.0 + 2.0)
    assert loss.item() == pytest.approx(2.0 - (-1.0) + 0.5 * 7.0)


def test_adam_clip_bounds_gradients():
    p = nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p], betas=(0.0, 0.999))
    p.grad = torch.tensor([5.0, -5.0, 0.05])
    clip_to_adam_bound(opt)
    assert torch.allclose(p.grad, torch.tensor([0.1, -0.1, 0.05]))
    opt.step()
    p.grad = torch.tensor([100.0, -100.0, 0.0])
    v_hat = opt.state[p]["exp_avg_sq"] / (1 - 0.999)
    clip_to_adam_bound(opt)
    assert torch.allclose(p.grad.abs()[:2], (3 * v_hat.sqrt() + 0.1)[:2])


def per_parameter_adam_clip(optimizer):
    """The clip as it was written before the multi-tensor version: the reference."""
    for group in optimizer.param_groups:
        beta2 = group["betas"][1]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state.get(p)
            if not state:
                p.grad.clamp_(-0.1, 0.1)
                continue
            v_hat = state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))
            bound = 3.0 * v_hat.sqrt() + 0.1
            p.grad.copy_(torch.minimum(torch.maximum(p.grad, -bound), bound))


def test_multi_tensor_adam_clip_equals_the_per_parameter_clip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 1), nn.Linear(1, 1))
    opt = torch.optim.Adam(model.parameters(), betas=(0.0, 0.999))
    for step in range(4):
        for i, p in enumerate(model.parameters()):  # one parameter skips steps: own counts
            p.grad = None if (i == 5 and step % 2) else torch.randn_like(p) * 10 ** (step - 2)
        grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        clip_to_adam_bound(opt)
        for p, g in zip(model.parameters(), grads, strict=True):
            if g is not None:
                p_ref = p.grad.clone()
                p.grad = g
                per_parameter_adam_clip(opt)
                assert torch.equal(p.grad, p_ref)
        opt.step()


def test_the_buffer_trains_on_the_device_and_returns_home(tmp_path):
    trainer = make_trainer(tmp_path, steps=2)
    assert trainer.objective.buffer.device == trainer.device
    trainer.fit()
    assert trainer.objective.buffer.device == torch.device("cpu")
    assert all(t.device.type == "cpu" for t in trainer.objective.buffer.state_dict().values()
               if torch.is_tensor(t))


def test_training_lowers_data_energy_relative_to_noise(tmp_path):
    trainer = make_trainer(tmp_path, steps=60)
    summary = trainer.fit()
    model = trainer.model
    data, noise = torch.randn(500, 2) * 0.5 + 1.0, torch.rand(500, 2) * 4 - 2
    with torch.no_grad():
        assert model(data).mean() < model(noise).mean()
    assert summary["step"] == 60 and summary["rollbacks"] == 0
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(2, 61, 2))


def steps_logged(folder):
    with open(folder / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def scorer():
    """A validate function that uses autograd and every global RNG, as a real one may."""
    held_out = torch.randn(64, 2, generator=torch.Generator().manual_seed(9)) * 0.5 + 1.0

    def validate(model):
        assert not model.training
        chain = langevin(model, torch.randn(64, 2), None, SAMPLER)
        noise = random.random() + np.random.rand() + torch.randn(()).item()
        with torch.no_grad():
            score = model(held_out).mean().item() + 0.1 * noise
        return {"score": score, "chain_mean": chain.mean().item()}

    return validate


def test_resumed_run_equals_unbroken_run_bit_for_bit(tmp_path):
    extra = dict(ema_decay=0.9, validate_every=3, select_by="score")
    unbroken = make_trainer(tmp_path / "a", steps=12, validate=scorer(), **extra)
    unbroken.fit()
    first = make_trainer(tmp_path / "b", steps=9, validate=scorer(), **extra)
    first.fit()
    resumed = make_trainer(tmp_path / "b", steps=12, seed=123, validate=scorer(), **extra)
    resumed.config.seed = 0  # the seed is restored from disk
    resumed.fit(resume=True)
    for a, b in zip(params(unbroken.model), params(resumed.model), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(unbroken.ema_state_dict().values(), resumed.ema_state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert torch.equal(unbroken.objective.buffer.data, resumed.objective.buffer.data)
    assert (unbroken.best_step, unbroken.best_value) == (resumed.best_step, resumed.best_value)
    for a, b in zip(unbroken.best_state_dict().values(), resumed.best_state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert steps_logged(tmp_path / "b") == steps_logged(tmp_path / "a") == [
        2, 3, 4, 6, 8, 9, 10, 12]


def test_resume_without_batch_state_continues_from_the_checkpoint(tmp_path):
    batches = [(torch.randn(16, 2, generator=torch.Generator().manual_seed(i)) + 1.0, None)
               for i in range(8)]
    first = make_trainer(tmp_path, steps=4)
    first.batches = iter(batches[:4])  # a plain iterator: no state_dict
    first.fit()
    shutil.copy(tmp_path / "checkpoint.pt", tmp_path / "step4.pt")
    resumed = make_trainer(tmp_path, steps=8)
    resumed.batches = iter(batches[4:])
    assert resumed.fit(resume=True)["step"] == 8
    by_hand = make_trainer(tmp_path / "by_hand", steps=8)
    by_hand.load_checkpoint(tmp_path / "step4.pt")
    by_hand.batches = iter(batches[4:])
    for _ in range(4):
        by_hand.train_step()
    for a, b in zip(params(by_hand.model), params(resumed.model), strict=True):
        assert torch.equal(a, b)
    log = (tmp_path / "events.log").read_text()
    assert "resumed from" in log and "at step 4" in log and "order restarts" in log
    assert steps_logged(tmp_path) == [2, 4, 6, 8]


def test_a_folder_holding_a_run_in_progress_needs_resume(tmp_path):
    make_trainer(tmp_path, steps=4).fit()
    with pytest.raises(UsageError, match=r"holds a run in progress .*pass resume=True"):
        make_trainer(tmp_path, steps=8).fit()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 4


def test_kl_term_gradient_matches_finite_differences(tmp_path):
    sampler = LangevinConfig(steps=2, step_size=0.05, noise=0.0, grad_clip=None, bounds=None)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(16, 2, generator=g, dtype=torch.float64)
    data = torch.randn(16, 2, generator=g, dtype=torch.float64) + 1.0

    def gradients(kl_weight, folder):
        torch.manual_seed(0)
        model = Energy().double()
        start = copy.deepcopy(model)
        buffer = ReplayBuffer(64, (2,), lambda n, c, g: x0.clone(), dtype=torch.float64,
                              replay_prob=0.0)
        config = TrainConfig(steps=1, adam_clip=False, progress=False)
        objective = Contrastive(model, sampler, buffer, ContrastiveConfig(kl_weight=kl_weight))
        trainer = Trainer(model, iter([(data, None)]), objective, config, folder)
        trainer.train_step()
        return start, [p.grad.clone() for p in model.parameters()]

    start, with_kl = gradients(0.5, tmp_path / "kl")
    _, without = gradients(0.0, tmp_path / "plain")
    # KL(theta) = mean E_frozen(x1 - lambda grad E_theta(x1)): only the last step sees theta
    frozen = copy.deepcopy(start)
    x1 = langevin(start, x0, config=sampler, steps=1)

    def kl():
        return frozen(langevin(start, x1, config=sampler, steps=1)).mean()

    for p, a, b in zip(start.parameters(), with_kl, without, strict=True):
        numeric = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += 1e-6
                up = kl()
                p.view(-1)[i] -= 2e-6
                down = kl()
                p.view(-1)[i] += 1e-6
            numeric.view(-1)[i] = (up - down) / 2e-6
        torch.testing.assert_close((a - b) / 0.5, numeric, rtol=1e-5, atol=1e-8)


def make_regression(out, steps, model=None, seed=0):
    """A supervised run on the same trainer: noisy regression y = 2x + dropout noise."""
    torch.manual_seed(seed)
    model = model or nn.Sequential(nn.Linear(2, 16), nn.Dropout(0.2), nn.Linear(16, 2))
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(5))

    def loss_fn(y, cond):
        return (model(cond) - y).pow(2).mean()

    config = TrainConfig(steps=steps, lr=1e-2, adam_clip=False, checkpoint_every=4,
                         log_every=2, progress=False, seed=seed)
    return Trainer(model, TensorBatches(2 * x, x, batch_size=32, seed=seed),
                   Supervised(model, loss_fn), config, out)


def test_supervised_objective_trains_and_resumes_exactly(tmp_path):
    unbroken = make_regression(tmp_path / "a", steps=40)
    summary = unbroken.fit()
    first = make_regression(tmp_path / "b", steps=22)
    first.fit()
    resumed = make_regression(tmp_path / "b", steps=40)
    resumed.fit(resume=True)
    for a, b in zip(params(unbroken.model), params(resumed.model), strict=True):
        assert torch.equal(a, b)
    with open(tmp_path / "a" / "metrics.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert summary["loss"] < 0.5 * losses[0]


def test_supervised_objective_rolls_back_on_nan(tmp_path):
    trainer = make_regression(tmp_path, steps=12)
    calls = {"n": 0}
    inner = trainer.objective.loss_fn

    def flaky(y, cond):
        calls["n"] += 1
        return inner(y, cond) * (float("nan") if calls["n"] == 7 else 1.0)

    trainer.objective.loss_fn = flaky
    assert trainer.fit()["rollbacks"] == 1
    assert "restored step 4" in (tmp_path / "events.log").read_text()
    assert steps_logged(tmp_path) == list(range(2, 13, 2))  # step 6 is not logged twice


def test_the_adam_clip_follows_the_objective_unless_set(tmp_path):
    """The paper's clip is part of the EBM recipe: on for contrastive divergence, off for a
    supervised loss, and whatever the config says when it says something."""
    assert make_trainer(tmp_path / "a", steps=1).adam_clip is True
    assert make_trainer(tmp_path / "b", steps=1, adam_clip=False).adam_clip is False
    assert make_regression(tmp_path / "c", steps=1).adam_clip is False
    model = nn.Linear(2, 2)
    supervised = Trainer(model, iter([]), Supervised(model, lambda x, c: x.sum()),
                         TrainConfig(adam_clip=True, progress=False), tmp_path / "d")
    assert supervised.adam_clip is True


def test_aux_loss_trains_beside_the_contrastive_loss(tmp_path):
    """A head used only by aux_loss learns its target; the energy still trains by CD."""

    class WithHead(Energy):
        def __init__(self):
            super().__init__()
            self.head = nn.Parameter(torch.zeros(2))

    model = WithHead()
    trainer = make_trainer(tmp_path / "a", steps=60, model=model, lr=0.05)
    objective = Contrastive(model, SAMPLER, trainer.objective.buffer, ContrastiveConfig(),
                            aux_loss=lambda x, cond: (model.head - x).pow(2).mean())
    aux = Trainer(model, trainer.batches, objective, trainer.config, tmp_path / "b")
    summary = aux.fit()
    torch.testing.assert_close(model.head.detach(), torch.ones(2), atol=0.2, rtol=0)
    assert summary["aux"] < 0.5 and "e_pos" in summary
    rows = list(csv.DictReader(open(tmp_path / "b" / "metrics.csv")))
    assert float(rows[0]["aux"]) > float(rows[-1]["aux"])


def test_snapshots_keep_the_newest_weights(tmp_path):
    trainer = make_trainer(tmp_path, steps=12, snapshot_every=2, snapshot_keep=3)
    trainer.fit()
    paths = snapshot_paths(tmp_path)
    assert [p.name for p in paths] == ["step00000008.pt", "step00000010.pt", "step00000012.pt"]
    last = torch.load(paths[-1], weights_only=True)
    for a, b in zip(last.values(), params(trainer.model), strict=True):
        assert torch.equal(a, b)


class NaNOnce(Energy):
    """Returns NaN energies on one forward call (a transient blow-up)."""

    def __init__(self, bad_call):
        super().__init__()
        self.calls, self.bad_call = 0, bad_call

    def forward(self, x, cond=None):
        self.calls += 1
        e = super().forward(x, cond)
        return e * float("nan") if self.calls == self.bad_call else e


def test_nan_rolls_back_to_last_good_checkpoint_and_continues(tmp_path):
    # 5 Langevin forwards + 1 loss forward per step: call 6*7 is step 7's loss (after ckpt 4)
    trainer = make_trainer(tmp_path, steps=12, model=NaNOnce(bad_call=42))
    summary = trainer.fit()
    assert summary["step"] == 12 and summary["rollbacks"] == 1
    assert all(torch.isfinite(p).all() for p in params(trainer.model))
    log = (tmp_path / "events.log").read_text()
    assert "rollback 1" in log and "restored step 4" in log
    assert trainer.lr_scale == pytest.approx(trainer.config.rollback_lr_scale)
    assert steps_logged(tmp_path) == list(range(2, 13, 2))  # cut back to step 4, not repeated


class PoisonsItsStatistic(Energy):
    """Writes NaN into a buffer the energy does not use (loss and gradients stay finite)."""

    def __init__(self, bad_call):
        super().__init__()
        self.register_buffer("stat", torch.zeros(2))
        self.calls, self.bad_call = 0, bad_call

    def forward(self, x, cond=None):
        self.calls += 1
        if self.calls == self.bad_call:
            self.stat.fill_(float("nan"))
        return super().forward(x, cond)


def test_non_finite_state_is_never_checkpointed(tmp_path):
    trainer = make_trainer(tmp_path, steps=12, model=PoisonsItsStatistic(bad_call=48))  # step 8
    assert trainer.fit()["rollbacks"] == 1
    log = (tmp_path / "events.log").read_text()
    assert "non-finite weight stat" in log and "restored step 4" in log
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    assert torch.isfinite(saved["stat"]).all() and torch.isfinite(trainer.model.stat).all()


class AlwaysExplodes(Energy):
    def forward(self, x, cond=None):
        return super().forward(x, cond) * 1e9


def test_gives_up_with_clear_error_after_max_rollbacks(tmp_path):
    trainer = make_trainer(tmp_path, steps=5, model=AlwaysExplodes(), max_rollbacks=2)
    with pytest.raises(TrainingDiverged, match="gave up after 2 rollbacks"):
        trainer.fit()
    assert (tmp_path / "checkpoint.pt").exists()


class DropoutEnergy(Energy):
    def __init__(self, p):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Dropout(p), nn.Linear(32, 1))


def test_chains_sample_one_fixed_energy_despite_dropout(tmp_path):
    negatives = []
    for name, p in (("dropout", 0.5), ("again", 0.5), ("none", 0.0)):
        torch.manual_seed(0)
        trainer = make_trainer(tmp_path / name, model=DropoutEnergy(p))
        trainer.train_step()
        negatives.append(trainer.objective.buffer.data[:32].clone())
        assert trainer.model.training  # back in train mode after the chain
    assert torch.equal(negatives[0], negatives[1]) and torch.equal(negatives[0], negatives[2])


def test_chains_leave_spectral_norm_power_iteration_alone(tmp_path):
    torch.manual_seed(0)
    model = Energy()
    model.net = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), spectral_norm(nn.Linear(32, 32)),
                              nn.SiLU(), nn.Linear(32, 1))
    trainer = make_trainer(tmp_path, model=model)
    once = copy.deepcopy(model)
    once(torch.zeros(1, 2))  # exactly one power iteration: the loss forward's
    trainer.train_step()
    ours, expected = (m.net[2].parametrizations.weight[0] for m in (model, once))
    assert torch.equal(ours._u, expected._u) and torch.equal(ours._v, expected._v)


def test_ema_is_the_exponential_average_of_the_weights(tmp_path):
    seen = []

    def validate(model):
        seen.append(params(model))
        return {"n": 0.0}

    trainer = make_trainer(tmp_path, ema_decay=0.8, validate=validate)
    expected = params(trainer.model)
    for _ in range(5):
        trainer.train_step()
        expected = [0.8 * e + 0.2 * p for e, p in zip(expected, params(trainer.model), strict=True)]
    ema = list(trainer.ema_state_dict().values())
    for got, want in zip(ema, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    weights = params(trainer.model)
    trainer.run_validation()  # validate sees the EMA weights; training weights come back
    assert all(torch.equal(a, b) for a, b in zip(seen[0], ema, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(params(trainer.model), weights, strict=True))
    assert trainer.model.training
    assert make_trainer(tmp_path / "off").ema_state_dict() is None


def test_validation_keeps_the_best_weights_without_changing_training(tmp_path):
    calls = []
    score = scorer()

    def validate(model):
        values = score(model)
        calls.append((values["score"], params(model)))
        return {**values, "val_fd": 0.0}  # a key already prefixed keeps its name

    plain = make_trainer(tmp_path / "plain")
    plain.fit()
    checked = make_trainer(tmp_path / "checked", validate=validate, validate_every=3,
                           select_by="score")
    summary = checked.fit()
    for a, b in zip(params(plain.model), params(checked.model), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(plain.objective.buffer.data, checked.objective.buffer.data)
    with open(tmp_path / "checked" / "metrics.csv") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f)}
    assert sorted(rows) == [2, 3, 4, 6, 8, 9, 10, 12]
    assert [s for s, r in rows.items() if r["val_score"]] == [3, 6, 9, 12]
    assert rows[3]["val_fd"] == "0.0" and "val_val_fd" not in rows[3]
    best = min(range(4), key=lambda i: calls[i][0])
    assert checked.best_step == summary["best_step"] == [3, 6, 9, 12][best]
    assert summary["best_value"] == calls[best][0]
    for a, b in zip(checked.best_state_dict().values(), calls[best][1], strict=True):
        assert torch.equal(a, b)
    assert plain.best_state_dict() is None


def test_collapse_guard_rolls_back_and_lowers_the_lr(tmp_path):
    # no Langevin steps: negatives are uniform noise, which the model separates outright
    setting = dict(steps=14, spread=0.05, sampler=replace(SAMPLER, steps=0), lr=2e-2,
                   alpha=0.1, log_every=1)
    free = make_trainer(tmp_path / "free", **setting).fit()
    assert free["rollbacks"] == 0 and free["e_neg"] - free["e_pos"] > 2.0
    guarded = make_trainer(tmp_path / "guarded", collapse_gap=2.0, collapse_window=10,
                           rollback_lr_scale=0.1, **setting)
    assert guarded.fit()["rollbacks"] == 1
    assert guarded.lr_scale == pytest.approx(0.1)
    assert guarded.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3)
    log = (tmp_path / "guarded" / "events.log").read_text()
    assert "collapse: mean E(x-) - E(x+) over the last 10 steps" in log
    assert "restored step 8" in log
