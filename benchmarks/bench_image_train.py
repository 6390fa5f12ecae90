"""Image-EBM training throughput: imagebm's presets on the shared Trainer vs a bare CD loop.

What: training iterations per second of ``trajebm.engine.train.Trainer.train_step`` for an imagebm
preset's model, sampler and batch size (replay buffer in uint8, class-conditional labels,
Adam's per-element clip, divergence checks), against a bare ~20-line contrastive-divergence
loop on the same model, batch and Langevin settings (noise, value clip, clamp; buffer as a
plain float tensor; no checks).

Why: an iteration is dominated by the Langevin chain's forward and backward passes; the
trainer's bookkeeping must not cost more than a few percent. Absolute iterations/s depend on
the machine (on a GPU this is the CIFAR-10 preset's throughput); the ratio, measured in the
same run, is what carries over.

Method: synthetic images (uniform noise) of the preset's shape and labels; one warm-up
iteration each, then ``--rounds`` rounds of ``--iters`` iterations, alternating which runs
first. Throughput from the median round; the ratio is the median of within-round ratios.

Run: ``.venv/bin/python benchmarks/bench_image_train.py --preset digits`` (CPU, ~1 min) or
``--preset cifar10-cond --device cuda`` on a GPU. ``--batch-size``/``--width`` shrink a paper
preset to fit a CPU.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import tempfile
import time
from dataclasses import replace

import torch

from imagebm.models import build_model
from imagebm.train import ImageTrainConfig, contrastive_objective, model_config, preset
from trajebm.engine.train import TensorBatches, TrainConfig, Trainer, clip_to_adam_bound


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="digits")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch")
    p.add_argument("--width", type=int, default=None, help="override the model's base width")
    p.add_argument("--langevin-steps", type=int, default=None, help="override the chain length")
    p.add_argument("--iters", type=int, default=5, help="iterations per timed round")
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args()


def bare_loop(model, images, labels, cfg, device):
    """The reference: plain CD with the paper's sampler and Adam clip, nothing else."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=(0.0, 0.999))
    s = cfg.sampler
    capacity = cfg.contrastive.buffer_size
    buffer = torch.rand((capacity, *images.shape[1:]))
    gen = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(len(images), (cfg.batch_size,), generator=gen)
        x_pos = images[idx].to(device)
        y = None if labels is None else labels[idx].to(device)
        x = buffer[torch.randint(capacity, (cfg.batch_size,), generator=gen)].to(device)
        for _ in range(s.steps):
            x = (x + s.noise * torch.randn_like(x)).detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(model(x, y).sum(), x)
            if s.grad_clip is not None:
                grad = grad.clamp(-s.grad_clip, s.grad_clip)
            x = (x - s.step_size * grad).clamp(0, 1)
        x = x.detach()
        e = model(torch.cat([x_pos, x]), None if y is None else torch.cat([y, y]))
        e_pos, e_neg = e[: len(x_pos)], e[len(x_pos):]
        loss = e_pos.mean() - e_neg.mean() + cfg.contrastive.alpha * (e_pos.pow(2).mean()
                                                                + e_neg.pow(2).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_to_adam_bound(opt)
        opt.step()
        buffer[torch.randint(capacity, (cfg.batch_size,), generator=gen)] = x.cpu()

    return step


def bench_preset(args: argparse.Namespace) -> ImageTrainConfig:
    """``args.preset`` with the batch size, width and chain length the flags override."""
    cfg = preset(args.preset)
    if args.batch_size:
        cfg = replace(cfg, batch_size=args.batch_size)
    if args.width:
        cfg = replace(cfg, model=replace(cfg.model, width=args.width))
    if args.langevin_steps:
        cfg = replace(cfg, sampler=replace(cfg.sampler, steps=args.langevin_steps))
    return cfg


def main() -> None:
    args = parse_args()
    cfg = bench_preset(args)
    device = torch.device(args.device)
    m = cfg.model
    classes = 10 if cfg.conditional else 0
    shape = (m.channels, m.image_size, m.image_size)
    n = max(4 * cfg.batch_size, 512)
    images = torch.rand((n, *shape))
    labels = torch.randint(max(classes, 1), (n,)) if classes else None
    torch.manual_seed(0)
    ours_model = build_model(model_config(cfg, classes)).to(device)
    bare_model = build_model(model_config(cfg, classes)).to(device)
    objective = contrastive_objective(ours_model, cfg, shape, bool(classes))
    tcfg = TrainConfig(steps=10**9, lr=cfg.train.lr, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(ours_model, TensorBatches(images, labels, cfg.batch_size), objective,
                          tcfg, tmp, device)
        runs = {"bare CD loop (reference)": bare_loop(bare_model, images, labels, cfg, device),
                "trajebm Trainer.train_step": trainer.train_step}

        def timed(fn) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.iters):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        for fn in runs.values():
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(args.rounds):
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                times[name].append(timed(runs[name]))
    ref = list(runs)[0]
    ratios = [b / o for b, o in zip(times[ref], times[list(runs)[1]], strict=True)]
    print(f"{datetime.date.today()}, {platform.machine()}, device {args.device}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; preset {args.preset}: "
          f"{m.arch} width {m.width or 'default'}, {shape}, batch {cfg.batch_size}, "
          f"{cfg.sampler.steps} Langevin steps")
    print("\n| implementation | iterations/s | vs bare loop |\n|---|---:|---:|")
    for name, ts in times.items():
        rate = args.iters / statistics.median(ts)
        ratio = 1.0 if name == ref else statistics.median(ratios)
        print(f"| {name} | {rate:.3f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
