"""`trajebm compare`: every model variant trained with every seed, scored on its own test
split, and reported as medians over seeds with bootstrap intervals — never one lucky seed.

A variant is a spec ``NAME[:key=value,...]`` (:func:`trajebm.fit.variant_config`), so ablations
run through the same command: ``ebm ebm:context_noise=0.1 fc fc-paper ensemble``. Each run
lives in ``OUT/<variant>/seed<s>/`` (a ``trajebm train`` run folder plus ``eval.npz``, its
predictions and per-start scores); a run whose files exist is reused, so an interrupted
comparison resumes where it stopped. The report: ``summary.json``, ``summary.md`` (a table of
medians with 95% intervals, and the probability that one variant beats another across seeds)
and ``fd.png`` (FD over the horizon, median and interval band per variant).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from trajebm.engine.errors import UsageError
from trajebm.engine.metrics import frechet_distance_resampled
from trajebm.engine.runinfo import atomic_write_bytes, jsonable, write_json, write_run_info
from trajebm.engine.stats import median_interval, median_over_seeds, probability_of_improvement
from trajebm.evaluate import (
    REPORT_STEPS,
    EvalConfig,
    PhysicsChecker,
    TestSet,
    check_fd_size,
    floor_per_step,
    load_test_set,
    predict_test,
    score_predictions,
)
from trajebm.fit import VARIANTS, FitConfig, fit_model, variant_config
from trajebm.models import MODEL_FILE, load_model

PLAN_FILE = "compare.json"
EVAL_FILE = "eval.npz"


@dataclass
class CompareConfig:
    """Seeds, the defaults every variant starts from, evaluation and bootstrap settings."""

    seeds: int = 5
    base: FitConfig = field(default_factory=FitConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(plots=False, render=False,
                                                                progress=False))
    resamples: int = 1000
    band_every: int = 4
    band_resamples: int = 200
    jobs: int = 1

    def __post_init__(self) -> None:
        if self.seeds <= 0:
            raise UsageError(f"seeds must be positive, got {self.seeds}")
        if self.jobs <= 0 or self.resamples <= 0 or self.band_every <= 0:
            raise UsageError("jobs, resamples and band_every must be positive")


def slug(spec: str) -> str:
    """A folder name for a variant spec: ``ebm:a=1,b=2`` -> ``ebm__a-1_b-2``."""
    name = spec.replace(":", "__").replace(",", "_").replace("=", "-")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise UsageError(f"{spec!r}: use letters, digits, '_', '-', '.' in variant specs")
    return name


def run_variant(data: str, spec: str, seed: int, run_dir: str, config: CompareConfig
                ) -> dict[str, Any]:
    """Train (unless ``model.pt`` exists) and score (unless ``eval.npz`` exists) one run.

    In a pool of ``jobs`` processes each uses one torch and one BLAS thread, so the jobs do not
    oversubscribe the cores (spin-waiting threads slow small models 10-50x).
    """
    if config.jobs > 1:
        torch.set_num_threads(1)
        threadpool_limits(1)
    run = Path(run_dir)
    base = replace(config.base, train=replace(config.base.train, seed=seed,
                                              progress=config.eval.progress))
    cfg = variant_config(spec, base)
    if not (run / MODEL_FILE).exists():
        fit_model(data, run, cfg, config.eval.device, resume=(run / "checkpoint.pt").exists())
    if not (run / EVAL_FILE).exists():
        model = load_model(run, config.eval.device)
        k = model.config.context
        test = load_test_set(data, model.split, k, config.eval.max_episodes)
        ecfg = replace(config.eval, seed=seed)
        t0 = time.perf_counter()
        pred = predict_test(model, test, ecfg)
        seconds = time.perf_counter() - t0
        checker = None
        try:
            if model.config.conditional:
                checker = PhysicsChecker(test.env_id,
                                         test.metadata["trajebm"]["include_velocities"])
            scores = score_predictions(pred, test, k, ecfg, checker)
        finally:
            if checker is not None:
                checker.close()
        physics = scores["physics_per_start"]
        arrays = {"pred": test.stats.normalize(pred).astype(np.float16),
                  "mse_per_start": np.asarray(scores["mse_per_start"]),
                  "physics_per_start": np.asarray(physics if physics is not None else []),
                  "rollout_seconds": np.array(seconds),
                  "train_seconds": np.array(model.meta.get("train_seconds") or np.nan),
                  "context": np.array(k)}
        _save_npz(run / EVAL_FILE, arrays)
    return {"spec": spec, "seed": seed}


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def compare(data: str | os.PathLike, specs: list[str], out_dir: str | os.PathLike,
            config: CompareConfig | None = None, resume: bool = False) -> dict[str, Any]:
    """Train and score every spec with seeds 0..N-1 into ``out_dir``; return the summary."""
    cfg = config or CompareConfig()
    if not specs:
        raise UsageError("give at least one model variant")
    if len(set(specs)) != len(specs):
        raise UsageError("each model variant may be named once")
    for spec in specs:
        variant_config(spec, cfg.base)
    names = {spec: slug(spec) for spec in specs}
    if len(set(names.values())) != len(names):
        raise UsageError("two variant specs map to the same folder name")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    if (out / PLAN_FILE).exists() and not resume:
        raise UsageError(f"{out} already holds a comparison; pass --resume to continue it or "
                         f"choose another --out")
    test = load_test_set(data, {"seed": cfg.base.split_seed,
                                "test_fraction": cfg.base.test_fraction},
                         cfg.base.model.context, cfg.eval.max_episodes)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / PLAN_FILE, {"data": str(data), "specs": specs, "seeds": cfg.seeds,
                                 "config": jsonable(cfg)})
    write_run_info(out, cfg, None, data=str(data), specs=specs)
    tasks = [(str(data), spec, s, str(out / names[spec] / f"seed{s}"), cfg)
             for spec in specs for s in range(cfg.seeds)]
    todo = [t for t in tasks if not (Path(t[3]) / EVAL_FILE).exists()]
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="compare", unit="run",
               disable=not cfg.eval.progress, dynamic_ncols=True)
    if cfg.jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(cfg.jobs, mp_context=get_context("spawn")) as pool:
            for _ in pool.map(run_variant, *zip(*todo, strict=True)):
                bar.update(1)
    else:
        for task in todo:
            run_variant(*task)
            bar.update(1)
    bar.close()
    summary = summarize(out, specs, names, cfg, test)
    write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "summary.md", summary_markdown(summary).encode())
    plot_bands(summary, out / "fd.png")
    return summary


def _fd_stat(pred: np.ndarray, truth: np.ndarray, t: int, dims: np.ndarray,
             chunk: int = 250):
    """FD at step t between resampled rows of predictions and truth, averaged over samples."""
    p = np.moveaxis(pred[:, :, t][..., dims], 1, 0)
    y = truth[:, t][..., dims]

    def stat(idx: np.ndarray) -> np.ndarray:
        return np.concatenate([frechet_distance_resampled(p, y, idx[lo : lo + chunk]).mean(0)
                               for lo in range(0, len(idx), chunk)])

    return stat


def summarize(out: Path, specs: list[str], names: dict[str, str], cfg: CompareConfig,
              test: TestSet) -> dict[str, Any]:
    """Medians over seeds with bootstrap intervals per variant; pairwise P(improvement)."""
    runs = {spec: [np.load(out / names[spec] / f"seed{s}" / EVAL_FILE)
                   for s in range(cfg.seeds)] for spec in specs}
    k = int(runs[specs[0]][0]["context"])
    horizon = runs[specs[0]][0]["pred"].shape[2]
    truth = test.stats.normalize(test.states[:, k : k + horizon]).astype(np.float64)
    n = len(truth)
    groups = test.groups()
    steps = [min(t, horizon) for t in REPORT_STEPS]
    band_steps = sorted({*range(cfg.band_every - 1, horizon, cfg.band_every), horizon - 1})
    floor = {g: floor_per_step(test.stats.normalize(test.train_states[:, k : k + horizon])[..., d],
                               truth[..., d], 0) for g, d in groups.items()}
    result: dict[str, Any] = {
        "data": str(test.metadata.get("dataset_id")), "split": test.split, "test_starts": n,
        "seeds": cfg.seeds, "samples": cfg.eval.samples, "horizon": horizon,
        "fd_warning": check_fd_size(test), "confidence": 0.95, "resamples": cfg.resamples,
        "floor": {g: {f"fd@{t}": float(f[t - 1]) for t in steps} for g, f in floor.items()},
        "floor_curve": floor["state"].tolist(), "band_steps": [t + 1 for t in band_steps],
        "variants": {}}
    per_seed_fd: dict[str, list[float]] = {}
    for spec in specs:
        preds = [r["pred"] for r in runs[spec]]
        entry: dict[str, Any] = {"folder": names[spec]}
        for g, dims in groups.items():
            for t in steps:
                stats = [_fd_stat(p, truth, t - 1, dims) for p in preds]
                key = f"fd@{t}" if g == "state" else f"{g} fd@{t}"
                entry[key] = median_over_seeds(stats, [n] * len(stats), recenter=True,
                                               resamples=cfg.resamples).as_dict()
                entry[key]["per_seed"] = [float(s(np.arange(n)[None])[0]) for s in stats]
        per_seed_fd[spec] = entry[f"fd@{steps[-1]}"]["per_seed"]
        entry["mse"] = median_interval(np.stack([r["mse_per_start"] for r in runs[spec]]),
                                       resamples=cfg.resamples).as_dict()
        physics = [r["physics_per_start"] for r in runs[spec]]
        entry["physics_error"] = (median_interval(np.stack(physics), resamples=cfg.resamples)
                                  .as_dict() if all(len(p) for p in physics) else None)
        entry["train_seconds"] = float(np.nanmedian([float(r["train_seconds"])
                                                     for r in runs[spec]]))
        band = [median_over_seeds([_fd_stat(p, truth, t, groups["state"]) for p in preds],
                                  [n] * len(preds), resamples=cfg.band_resamples,
                                  recenter=True)
                for t in band_steps]
        entry["band"] = {"median": [b.value for b in band], "low": [b.low for b in band],
                         "high": [b.high for b in band]}
        result["variants"][spec] = entry
    result["probability_of_improvement"] = {
        a: {b: probability_of_improvement(per_seed_fd[a], per_seed_fd[b],
                                          resamples=cfg.resamples).as_dict()
            for b in specs if b != a} for a in specs}
    result["poi_metric"] = f"fd@{steps[-1]}"
    return result


def _cell(entry: dict[str, float] | None) -> str:
    if entry is None:
        return "–"
    return f"{entry['value']:.3g} [{entry['low']:.3g}, {entry['high']:.3g}]"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The comparison as markdown: medians [95% interval] per variant, then P(row beats col)."""
    variants = summary["variants"]
    first = next(iter(variants.values()))
    fd_keys = [k for k in first if k.startswith("fd@")]
    group_keys = [k for k in first if k.startswith(("hand fd@", "object fd@"))
                  and k.endswith(fd_keys[-1])]
    keys = [*fd_keys, *group_keys, "mse", "physics_error"]
    floor = summary["floor"]
    lines = [f"Median over {summary['seeds']} seeds [95% bootstrap interval over seeds and "
             f"{summary['test_starts']} test starts]; FD in z units, {summary['samples']} "
             f"samples per start for stochastic models.", "",
             "| model | " + " | ".join(keys) + " | train s |",
             "|" + "---|" * (len(keys) + 2)]
    floor_cells = [f"{floor['state'][k]:.3g}" if k in floor["state"] else
                   f"{floor[k.split()[0]][k.split()[1]]:.3g}" if " " in k else "–"
                   for k in keys]
    lines.append("| train vs test (floor) | " + " | ".join(floor_cells) + " | – |")
    for spec, entry in variants.items():
        cells = [_cell(entry.get(k)) for k in keys]
        lines.append(f"| {spec} | " + " | ".join(cells) + f" | {entry['train_seconds']:.0f} |")
    poi = summary["probability_of_improvement"]
    specs = list(variants)
    lines += ["", f"Probability that the row's {summary['poi_metric']} is lower than the "
              f"column's (across seeds; 0.5 = no difference):", "",
              "| | " + " | ".join(specs) + " |", "|" + "---|" * (len(specs) + 1)]
    for a in specs:
        cells = ["–" if a == b else f"{poi[a][b]['value']:.2f}" for b in specs]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    if summary.get("fd_warning"):
        lines += ["", f"Warning: {summary['fd_warning']}."]
    return "\n".join(lines) + "\n"


def plot_bands(summary: dict[str, Any], path: Path) -> None:
    """FD over the horizon: median over seeds and its 95% interval as a band, per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = summary["variants"]
    colors = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20").colors
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(np.arange(1, summary["horizon"] + 1), summary["floor_curve"], "k--",
            label="train vs test")
    x = summary["band_steps"]
    for (spec, entry), color in zip(variants.items(), colors, strict=False):
        band = entry["band"]
        ax.plot(x, band["median"], label=spec, color=color)
        ax.fill_between(x, band["low"], band["high"], color=color, alpha=0.15)
    ax.set(yscale="log", xlabel="predicted step", ylabel="Fréchet distance (z units)",
           title=f"median over {summary['seeds']} seeds, 95% interval")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_compare(args: argparse.Namespace) -> int:
    base = variant_config(args.base) if args.base else FitConfig()
    ecfg = EvalConfig(horizon=args.horizon, samples=args.samples, max_episodes=args.episodes,
                      device=args.device, plots=False, render=False, progress=not args.quiet)
    cfg = CompareConfig(seeds=args.seeds, base=base, eval=ecfg, resamples=args.resamples,
                        jobs=args.jobs)
    summary = compare(args.data, args.models, args.out, cfg, resume=args.resume)
    print(summary_markdown(summary))
    print(f"wrote {Path(args.out) / 'summary.md'}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``trajebm compare``."""
    d = CompareConfig()
    p = subparsers.add_parser(
        "compare", help="train and score model variants over seeds; medians with intervals")
    p.add_argument("--data", required=True, help="dataset folder (from `trajebm collect`)")
    p.add_argument("--models", nargs="+", required=True,
                   help=f"variants NAME[:key=value,...]; NAME: {' '.join(VARIANTS)}")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--seeds", type=int, default=d.seeds, help="train seeds 0..N-1")
    p.add_argument("--base", default=None,
                   help="settings every variant starts from, as a spec (e.g. ebm:steps=1000)")
    p.add_argument("--horizon", type=int, default=d.eval.horizon)
    p.add_argument("--samples", type=int, default=d.eval.samples,
                   help="samples per test start (stochastic models)")
    p.add_argument("--episodes", type=int, default=None, help="use at most N test episodes")
    p.add_argument("--resamples", type=int, default=d.resamples, help="bootstrap resamples")
    p.add_argument("--jobs", type=int, default=d.jobs,
                   help="runs in parallel (processes of one torch thread each)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--resume", action="store_true", help="continue the comparison in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_compare)
