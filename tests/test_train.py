"""Trainer: loss and clip, exact resume, divergence rollback, torch.distributed (gloo) sync."""

import csv
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trajebm.engine.buffer import ReplayBuffer, uniform_init
from trajebm.engine.sampling import LangevinConfig
from trajebm.engine.train import (
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


def make_trainer(out, steps=12, model=None, seed=0, **cfg):
    torch.manual_seed(seed)
    model = model or Energy()
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(5)) * 0.5 + 1.0
    config = TrainConfig(steps=steps, lr=1e-2, sampler=SAMPLER, checkpoint_every=4,
                         log_every=2, progress=False, seed=seed, **cfg)
    buffer = ReplayBuffer(200, (2,), uniform_init(-2, 2, (2,)), seed=seed)
    return Trainer(model, TensorBatches(data, batch_size=32, seed=seed), buffer, config, out)


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


def test_resumed_run_equals_unbroken_run_bit_for_bit(tmp_path):
    unbroken = make_trainer(tmp_path / "a", steps=12)
    unbroken.fit()
    first = make_trainer(tmp_path / "b", steps=8)
    first.fit()
    resumed = make_trainer(tmp_path / "b", steps=12, seed=123)  # seed is restored from disk
    resumed.config.seed = 0
    resumed.fit(resume=True)
    for a, b in zip(params(unbroken.model), params(resumed.model), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(unbroken.buffer.data, resumed.buffer.data)
    with open(tmp_path / "b" / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(2, 13, 2))


def make_regression(out, steps, model=None, seed=0):
    """A supervised run on the same trainer: noisy regression y = 2x + dropout noise."""
    torch.manual_seed(seed)
    model = model or nn.Sequential(nn.Linear(2, 16), nn.Dropout(0.2), nn.Linear(16, 2))
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(5))

    def loss_fn(y, cond):
        return (model(cond) - y).pow(2).mean()

    config = TrainConfig(steps=steps, lr=1e-2, adam_clip=False, checkpoint_every=4,
                         log_every=2, progress=False, seed=seed)
    return Trainer(model, TensorBatches(2 * x, x, batch_size=32, seed=seed), None, config, out,
                   loss_fn=loss_fn)


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
    inner = trainer.loss_fn

    def flaky(y, cond):
        calls["n"] += 1
        return inner(y, cond) * (float("nan") if calls["n"] == 7 else 1.0)

    trainer.loss_fn = flaky
    assert trainer.fit()["rollbacks"] == 1
    assert "restored step 4" in (tmp_path / "events.log").read_text()


def test_trainer_needs_exactly_one_objective(tmp_path):
    trainer = make_trainer(tmp_path, steps=1)
    with pytest.raises(ValueError, match="not both"):
        Trainer(trainer.model, trainer.batches, trainer.buffer, trainer.config, tmp_path,
                loss_fn=lambda x, c: x.sum())
    with pytest.raises(ValueError, match="not both"):
        Trainer(trainer.model, trainer.batches, None, trainer.config, tmp_path)


def test_snapshots_keep_the_newest_weights(tmp_path):
    trainer = make_trainer(tmp_path, steps=12, snapshot_every=2, snapshot_keep=3)
    trainer.fit()
    paths = snapshot_paths(tmp_path)
    assert [p.name for p in paths] == ["step00000008.pt", "step00000010.pt", "step00000012.pt"]
    last = torch.load(paths[-1], weights_only=True)
    for a, b in zip(last.values(), params(trainer.model), strict=True):
        assert torch.equal(a, b)


def test_resume_without_state_dict_batches_still_runs(tmp_path):
    trainer = make_trainer(tmp_path, steps=4, kl_weight=0.5)
    trainer.batches = iter([(torch.randn(16, 2), None)] * 4)
    assert trainer.fit()["kl"] != 0.0


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
    # 5 Langevin forwards + 1 loss forward per step: call 6*6 is step 6's loss (after ckpt 4)
    trainer = make_trainer(tmp_path, steps=12, model=NaNOnce(bad_call=36))
    summary = trainer.fit()
    assert summary["step"] == 12 and summary["rollbacks"] == 1
    assert all(torch.isfinite(p).all() for p in params(trainer.model))
    log = (tmp_path / "events.log").read_text()
    assert "rollback 1" in log and "restored step 4" in log
    assert trainer.lr_scale == pytest.approx(trainer.config.rollback_lr_scale)


class AlwaysExplodes(Energy):
    def forward(self, x, cond=None):
        return super().forward(x, cond) * 1e9


def test_gives_up_with_clear_error_after_max_rollbacks(tmp_path):
    trainer = make_trainer(tmp_path, steps=5, model=AlwaysExplodes(), max_rollbacks=2)
    with pytest.raises(TrainingDiverged, match="gave up after 2 rollbacks"):
        trainer.fit()
    assert (tmp_path / "checkpoint.pt").exists()


def _distributed_worker(rank, world_size, port, out, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(rank)  # different initial weights: the trainer must broadcast
        model = Energy()
        data = torch.randn(128, 2, generator=torch.Generator().manual_seed(rank)) + rank
        config = TrainConfig(steps=6, lr=1e-2, sampler=SAMPLER, checkpoint_every=3,
                             progress=False)
        buffer = ReplayBuffer(100, (2,), uniform_init(-2, 2, (2,)), seed=rank)
        trainer = Trainer(model, TensorBatches(data, batch_size=16, seed=rank), buffer,
                          config, out)
        trainer.fit()
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        queue.put((rank, flat.numpy(), buffer.data[: len(buffer)].numpy()))  # no shared memory
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_training_keeps_parameters_in_sync(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_distributed_worker, args=(2, free_port(), str(tmp_path), queue),
                       nprocs=2, start_method="spawn")
    results = dict((r, (p, b)) for r, p, b in (queue.get(timeout=60) for _ in range(2)))
    assert (results[0][0] == results[1][0]).all()
    assert not (results[0][1] == results[1][1]).all()  # each rank keeps its own buffer
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "checkpoint.rank1.pt").exists()
