"""Runs for tests/test_faults.py: a tiny EBM run that can be killed (a script) and DDP workers.

``python tests/_fault_worker.py OUT STEPS [--pace S] [--block-checkpoint-at N]`` trains (resuming
whatever OUT holds), prints ``step K`` as each step starts, sleeps ``S`` seconds per step, and
with ``--block-checkpoint-at N`` writes half of the step-N checkpoint, prints ``writing`` and
hangs, so the test can kill it mid-write.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

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
)

SAMPLER = LangevinConfig(steps=5, step_size=0.05, convention="textbook", grad_clip=None,
                         bounds=None)


class Energy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Linear(32, 1))

    def forward(self, x, cond=None):
        return self.net(x).squeeze(-1)


class Paced(TensorBatches):
    """Batches that announce each step on stdout and take ``pace`` seconds to arrive."""

    pace = 0.0
    trainer: Trainer | None = None

    def __next__(self):
        if self.trainer is not None:
            print(f"step {self.trainer.step + 1}", flush=True)
        time.sleep(self.pace)
        return super().__next__()


def validate(model):
    """A held-out score that uses autograd and every global RNG."""
    held_out = torch.randn(64, 2, generator=torch.Generator().manual_seed(9)) * 0.5 + 1.0
    chain = langevin(model, torch.randn(32, 2), None, SAMPLER)
    noise = random.random() + np.random.rand() + torch.randn(()).item()
    with torch.no_grad():
        return {"score": model(held_out).mean().item() + 0.1 * noise,
                "chain_mean": chain.mean().item()}


def ebm_trainer(out, steps: int, **overrides) -> Trainer:
    """The run every fault test breaks: EMA, validation and selection on, checkpoints every 3."""
    torch.manual_seed(0)
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(5)) * 0.5 + 1.0
    settings = dict(steps=steps, lr=1e-2, checkpoint_every=3, log_every=1,
                    progress=False, ema_decay=0.9, validate_every=5, select_by="score")
    config = TrainConfig(**{**settings, **overrides})
    buffer = ReplayBuffer(200, (2,), uniform_init(-2, 2, (2,)))
    batches = Paced(data, batch_size=32)
    model = Energy()
    batches.trainer = Trainer(model, batches, Contrastive(model, SAMPLER, buffer), config, out,
                              validate=validate)
    return batches.trainer


def block_checkpoint_write(trainer: Trainer, at_step: int) -> None:
    """Make the checkpoint write of step ``at_step`` stop halfway (and hang) to be killed."""
    real = os.write

    def write(fd, data):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if trainer.step == at_step and os.path.basename(target).startswith(".checkpoint.pt."):
            real(fd, bytes(data[: len(data) // 2]))
            print("writing", flush=True)
            time.sleep(600)
        return real(fd, data)

    os.write = write


class Shards:
    """Deterministic batches: at step k rank r takes rows [(k W + r) B, (k W + r + 1) B)."""

    def __init__(self, x, y, batch: int, rank: int = 0, world: int = 1) -> None:
        self.x, self.y, self.batch, self.rank, self.world, self.k = x, y, batch, rank, world, 0

    def __iter__(self):
        return self

    def __next__(self):
        start = (self.k * self.world + self.rank) * self.batch
        idx = torch.arange(start, start + self.batch) % len(self.x)
        self.k += 1
        return self.y[idx], self.x[idx]

    def state_dict(self):
        return {"k": self.k}

    def load_state_dict(self, state):
        self.k = state["k"]


def regression_trainer(out, steps: int, batch: int, rank: int = 0, world: int = 1) -> Trainer:
    """A supervised linear regression (exactly reproducible) on :class:`Shards`."""
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = nn.Linear(3, 2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 3, generator=g)
    y = x @ torch.randn(3, 2, generator=g) + 0.1 * torch.randn(96, 2, generator=g)

    def loss_fn(target, inputs):
        return (model(inputs) - target).pow(2).mean()

    config = TrainConfig(steps=steps, lr=1e-2, adam_clip=False, checkpoint_every=3,
                         progress=False)
    return Trainer(model, Shards(x, y, batch, rank, world), Supervised(model, loss_fn), config,
                   out)


def flat(model: nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


def ddp_worker(rank: int, world: int, port: int, out: str, queue) -> None:
    """Every DDP scenario of test_faults on one pair of gloo ranks (one spawn for all)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        reg = regression_trainer(os.path.join(out, "regression"), 6, 8, rank, world)
        reg.fit()
        queue.put(("regression", rank, flat(reg.model)))

        run = os.path.join(out, "ebm")
        torch.manual_seed(rank)  # different initial weights; the same buffer seed on each rank
        data = torch.randn(256, 2, generator=torch.Generator().manual_seed(5)) + 1.0

        def ebm(steps):
            config = TrainConfig(steps=steps, lr=1e-2, checkpoint_every=3, progress=False)
            buffer = ReplayBuffer(100, (2,), uniform_init(-2, 2, (2,)), seed=0)
            model = Energy()
            return Trainer(model, TensorBatches(data, batch_size=16, seed=0),
                           Contrastive(model, SAMPLER, buffer, ContrastiveConfig()), config, run)

        first = ebm(3)
        starts = first.objective.buffer.generator.get_state(), first.batches.perm.clone()
        first.fit()
        mine = os.path.join(run, "checkpoint.pt" if rank == 0 else f"checkpoint.rank{rank}.pt")
        stale = open(mine, "rb").read()
        resumed = ebm(6)
        resumed.fit(resume=True)
        queue.put(("ebm", rank, (flat(resumed.model), resumed.objective.buffer.data.numpy().copy(),
                                 starts[0].numpy(), starts[1].numpy())))

        for fault in ("missing", "stale"):
            if rank == 1:
                if fault == "missing":
                    os.remove(mine)
                else:
                    with open(mine, "wb") as f:
                        f.write(stale)
            dist.barrier()
            try:
                ebm(9).fit(resume=True)
                queue.put((fault, rank, "no error"))
            except UsageError as err:
                queue.put((fault, rank, str(err)))
            dist.barrier()
    finally:
        dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("steps", type=int)
    p.add_argument("--pace", type=float, default=0.0)
    p.add_argument("--block-checkpoint-at", type=int, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    Paced.pace = args.pace
    trainer = ebm_trainer(args.out, args.steps)
    if args.block_checkpoint_at is not None:
        block_checkpoint_write(trainer, args.block_checkpoint_at)
    trainer.fit(resume=True)
    print("done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
