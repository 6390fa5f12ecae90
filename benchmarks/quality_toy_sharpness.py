"""Quality: do the toy fits neither collapse nor blur, on every density, over seeds?

What: for settings (overrides of :class:`trajebm.toy.ToyConfig`) × densities × seeds, the
median energy distance of the samples to held-out data with a 95% bootstrap interval over
seeds, against the Gaussian fit's; for the densities with separated modes (8gaussians and
``8gaussians-unequal``, the same 8 modes weighted 30/20/15/10/8/7/5/5%) the median share of
samples further than 3σ from every mode (interval over seeds and samples); and how many runs
collapsed (mean E(samples) - E(held-out data) > ``trajebm.toy.COLLAPSE_GAP``, or the
collapse guard gave up after its rollbacks: no samples, counted as an infinite distance and 4
rollbacks).

Why: the energy penalty alpha = 0.03 ended the collapse of alpha = 0.001 but blurred the
samples (issue 22, part 5). Target: no collapse, <= 2% beyond 3σ, energy distance below the
Gaussian fit's on all seven standard densities.

Method: :func:`trajebm.toy.train_toy` once per training setting, density and seed;
settings that differ only in the final sampling chain (``langevin_steps``,
``sample_temperature``) reuse that training. Runs are appended to ``--cache`` (JSON lines) and
skipped when already there, so a table can be extended or reprinted.

Run: ``.venv/bin/python benchmarks/quality_toy_sharpness.py
--settings a0.03 a0.03-T0.5 --seeds 0 1 2 --cache runs/toy-sharpness.jsonl``
(~50 s per training at 5,000 steps on one thread; ``--steps`` shortens the search).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from trajebm.engine.stats import median_interval
from trajebm.engine.train import TrainingDiverged
from trajebm.toy import (
    DENSITIES,
    ToyConfig,
    draw_samples,
    eight_gaussians_centers,
    mode_coverage,
    sample_density,
    score_samples,
    train_toy,
)

UNEQUAL_WEIGHTS = np.array([0.30, 0.20, 0.15, 0.10, 0.08, 0.07, 0.05, 0.05])
MODE_DENSITIES = ("8gaussians", "8gaussians-unequal")
SAMPLING_KEYS = ("langevin_steps", "sample_temperature")
CONTRASTIVE_KEYS = ("alpha", "alpha_end", "collapse_gap")

SETTINGS: dict[str, dict[str, float]] = {
    "a0.03": {"alpha": 0.03},
    "a0.03-T0.5": {"alpha": 0.03, "sample_temperature": 0.5},
    "a0.03-T0.3": {"alpha": 0.03, "sample_temperature": 0.3},
    "a0.03-L1000": {"alpha": 0.03, "langevin_steps": 1000},
    "a0.03-T0.5-L1000": {"alpha": 0.03, "sample_temperature": 0.5, "langevin_steps": 1000},
    "a0.01": {"alpha": 0.01, "collapse_gap": 30.0},
    "a0.01-T0.7": {"alpha": 0.01, "collapse_gap": 30.0, "sample_temperature": 0.7},
    "a0.01-T0.5": {"alpha": 0.01, "collapse_gap": 30.0, "sample_temperature": 0.5},
    "a0.01-noguard": {"alpha": 0.01},
    "a0.01-chain20": {"alpha": 0.01, "collapse_gap": 30.0, "sampler_steps": 20},
    "a0.02": {"alpha": 0.02, "collapse_gap": 30.0},
    "a0.02-T0.7": {"alpha": 0.02, "collapse_gap": 30.0, "sample_temperature": 0.7},
    "a0.01-eta0.02": {"alpha": 0.01, "collapse_gap": 30.0, "sampler_step_size": 0.02},
    "a0.003": {"alpha": 0.003, "collapse_gap": 30.0},
    "a0.003-T0.5": {"alpha": 0.003, "collapse_gap": 30.0, "sample_temperature": 0.5},
    "a0.03to0.01": {"alpha": 0.03, "alpha_end": 0.01},
    "a0.03to0.01-guard": {"alpha": 0.03, "alpha_end": 0.01, "collapse_gap": 30.0},
    "a0.03to0.003": {"alpha": 0.03, "alpha_end": 0.003, "collapse_gap": 30.0},
}
"""Named settings: ToyConfig overrides (alpha, alpha_end and collapse_gap go to its
ContrastiveConfig, sampler_* to the training chain's LangevinConfig)."""


def unequal_mixture(n: int, seed: int) -> np.ndarray:
    """8gaussians' modes with the unequal weights above (what a user would pass as --data)."""
    rng = np.random.default_rng(seed)
    modes = rng.choice(8, size=n, p=UNEQUAL_WEIGHTS)
    std = 0.5 / np.sqrt(2.0)
    return (eight_gaussians_centers()[modes] + std * rng.standard_normal((n, 2))).astype(
        np.float32)


def make_config(overrides: dict[str, float], seed: int, steps: int | None) -> ToyConfig:
    """The default ToyConfig with ``overrides`` applied (contrastive keys to its objective)."""
    cfg = ToyConfig(seed=seed)
    contrastive = {k: v for k, v in overrides.items() if k in CONTRASTIVE_KEYS}
    chain = {k[8:]: v for k, v in overrides.items() if k.startswith("sampler_")}
    sampler = replace(cfg.sampler, **{k: int(v) if k == "steps" else v for k, v in chain.items()})
    top = {k: v for k, v in overrides.items()
           if k not in contrastive and not k.startswith("sampler_")}
    train = replace(cfg.train, progress=False, steps=steps or cfg.train.steps)
    return replace(cfg, contrastive=replace(cfg.contrastive, **contrastive), train=train,
                   sampler=sampler, **top)


def run_group(names: list[str], density: str, seed: int, steps: int | None) -> list[dict]:
    """Train once for settings sharing their training overrides; sample and score each."""
    cfgs = [make_config(SETTINGS[n], seed, steps) for n in names]
    cfg = cfgs[0]
    n = cfg.num_train + cfg.num_test
    data = unequal_mixture(n, seed) if density == "8gaussians-unequal" else sample_density(
        density, n, seed)
    test, train = data[: cfg.num_test], data[cfg.num_test:]
    mean, std = train.mean(0), train.std(0) + 1e-8
    z = torch.as_tensor((train - mean) / std, dtype=torch.float32)
    try:
        with tempfile.TemporaryDirectory() as out:
            trained = train_toy(z, out, cfg)
    except TrainingDiverged:  # the collapse guard gave up: a collapse, no samples
        return [{"setting": name, "density": density, "seed": seed, "steps": cfg.train.steps,
                 "energy_distance": math.inf, "energy_distance_gaussian_fit": math.nan,
                 "collapsed": True, "gave_up": True} for name in names]
    rows = []
    for name, c in zip(names, cfgs, strict=True):
        z_samples = draw_samples(trained, c)
        metrics = score_samples(trained, z_samples, train, test, mean, std, c)
        row = {"setting": name, "density": density, "seed": seed, "steps": c.train.steps,
               **{k: v for k, v in metrics.items() if k != "final_loss"}}
        if density in MODE_DENSITIES:
            samples = z_samples.numpy() * std + mean
            d = np.linalg.norm(samples[:, None] - eight_gaussians_centers()[None], axis=-1)
            row["beyond_3sigma"] = (d.min(1) > 1.5 / np.sqrt(2.0)).astype(int).tolist()
            row["mode_weights"] = mode_coverage(samples)["mode_weights"]
        rows.append(row)
    return rows


def training_groups(names: list[str]) -> list[list[str]]:
    """Settings grouped by their training overrides (all but the sampling keys)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        key = json.dumps({k: v for k, v in SETTINGS[name].items() if k not in SAMPLING_KEYS},
                         sort_keys=True)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def fmt(interval, scale: float = 1.0, digits: int = 4) -> str:
    return (f"{interval.value * scale:.{digits}f} [{interval.low * scale:.{digits}f}, "
            f"{interval.high * scale:.{digits}f}]")


def ed_cell(runs: list[dict]) -> tuple[str, str]:
    """The energy distance's median [interval] and the Gaussian fit's ("–" if none ran)."""
    ran = [r for r in runs if not r.get("gave_up")]
    if not ran:
        return "guard gave up", "–"
    ed = median_interval(np.array([[r["energy_distance"]] for r in runs]))
    gauss = np.median([r["energy_distance_gaussian_fit"] for r in ran])
    return fmt(ed), f"{gauss:.4f}"


def table(rows: list[dict], names: list[str], densities: list[str], steps: int) -> str:
    """Markdown: one row per setting and density, medians over seeds with intervals."""
    lines = ["| setting | density | seeds | energy distance [95%] | Gaussian fit | "
             "beyond 3σ, % [95%] | collapsed | rollbacks |",
             "|---|---|---:|---|---:|---|---:|---:|"]
    for name in names:
        for density in densities:
            runs = [r for r in rows if r["setting"] == name and r["density"] == density
                    and r["steps"] == steps]
            if not runs:
                continue
            ed, gauss = ed_cell(runs)
            beyond = "–"
            if density in MODE_DENSITIES and all("beyond_3sigma" in r for r in runs):
                beyond = fmt(median_interval(np.array([r["beyond_3sigma"] for r in runs])),
                             100, 1)
            collapsed = sum(r["collapsed"] for r in runs)
            rollbacks = sum(r.get("rollbacks", 4) for r in runs)
            lines.append(f"| {name} | {density} | {len(runs)} | {ed} | {gauss} | {beyond} | "
                         f"{collapsed}/{len(runs)} | {rollbacks} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--densities", nargs="+", default=[*DENSITIES, "8gaussians-unequal"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="training steps (default: ToyConfig's)")
    p.add_argument("--cache", type=Path, default=Path("runs/toy-sharpness.jsonl"))
    p.add_argument("--table-only", action="store_true", help="print the cached runs' table")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    steps = args.steps or ToyConfig().train.steps
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in args.cache.open()] if args.cache.exists() else []
    done = {(r["setting"], r["density"], r["seed"], r["steps"]) for r in rows}
    for density in [] if args.table_only else args.densities:
        for seed in args.seeds:
            for group in training_groups(args.settings):
                todo = [n for n in group if (n, density, seed, steps) not in done]
                if not todo:
                    continue
                new = run_group(todo, density, seed, args.steps)
                with args.cache.open("a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in new)
                rows += new
                print(f"{density} seed {seed}: " + ", ".join(
                    f"{r['setting']} ED {r['energy_distance']:.4f}" for r in new), flush=True)
    print(table(rows, args.settings, args.densities, steps))


if __name__ == "__main__":
    main()
