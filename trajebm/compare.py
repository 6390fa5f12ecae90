"""`trajebm compare`: every model variant trained with every seed, scored on its own test
split, and reported as medians over seeds with bootstrap intervals — never one lucky seed.

A variant is a spec ``NAME[:key=value,...]`` (:func:`trajebm.variants.variant_config`), so
ablations run through the same command: ``ebm ebm:context_noise=0.1 fc fc-paper ensemble``;
settings every variant starts from are ``CompareConfig.base`` (``--base key=value,...``). Each run
lives in ``OUT/<variant>/seed<s>/`` (a ``trajebm train`` run folder plus ``eval.npz``, its
predictions and per-start scores); a run whose files exist is reused, so an interrupted
comparison resumes where it stopped (with the same data and settings; :func:`check_resume`
refuses others, since a run is found by its variant's name alone). The report:
``summary.json``, ``summary.md`` (a table of medians with 95% intervals, and the probability
that one variant beats another across seeds), ``scores.md`` (the same for the proper scores per
start of :mod:`trajebm.evaluate.scores`; they are in ``summary.json`` under each variant's
``scores`` and ``score_poi``), ``fd.png`` (FD over the horizon, median and interval band per
variant) and ``calibration.png`` (observed vs nominal coverage of the samples' central
intervals).
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Callable, Mapping
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
from trajebm.engine.plotting import pyplot
from trajebm.engine.runinfo import atomic_write_bytes, jsonable, write_json, write_run_info
from trajebm.engine.settings import differences, from_dict, parse_overrides, parse_spec
from trajebm.engine.stats import median_interval, median_over_seeds, probability_of_improvement
from trajebm.evaluate import (
    REPORT_STEPS,
    EvalConfig,
    TestSet,
    check_fd_size,
    floor_groups,
    format_interval,
    load_test_set,
    physics_checker,
    plot_calibration,
    predict_test,
    score_predictions,
    score_summary,
    scores_markdown,
    starts_scored,
)
from trajebm.fit import FitConfig, fit_model
from trajebm.modelio import MODEL_FILE, load_model
from trajebm.rollout import usable_horizon
from trajebm.variants import VARIANTS, variant_config

PLAN_FILE = "compare.json"
EVAL_FILE = "eval.npz"
RESUME_FREE = frozenset({"seeds", "jobs", "eval.progress", "resamples", "band_every",
                         "band_resamples"})
"""Settings a resumed comparison may change: they add or drop seeds, or change only how the
report is computed, never a finished run."""


@dataclass
class CompareConfig:
    """Seeds, the settings every variant starts from, evaluation and bootstrap settings."""

    seeds: int = 5
    """Train seeds 0..N-1 per variant."""
    base: dict[str, Any] = field(default_factory=dict)
    """Settings every variant starts from (``{"steps": 1000}``; a string ``key=value,...`` is
    parsed by :func:`parse_base`); each variant's own settings and its spec win over them."""
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(plots=False, render=False,
                                                                progress=False))
    """How each run is scored on its test split."""
    resamples: int = 1000
    """Bootstrap resamples."""
    band_every: int = 4
    """Steps between the points of the FD band in fd.png."""
    band_resamples: int = 200
    """Bootstrap resamples per point of the FD band."""
    jobs: int = 1
    """Runs in parallel (processes of one torch thread each)."""

    def __post_init__(self) -> None:
        if isinstance(self.base, str):
            self.base = parse_base(self.base)
        if self.seeds <= 0:
            raise UsageError(f"seeds must be positive, got {self.seeds}")
        if self.jobs <= 0 or self.resamples <= 0 or self.band_every <= 0:
            raise UsageError("jobs, resamples and band_every must be positive")


def parse_base(text: str) -> dict[str, Any]:
    """The settings of ``--base``: ``key=value,...``, or ``NAME:key=value,...`` as before,
    where NAME must be a variant but each variant keeps its own settings (only the key=value
    settings are shared)."""
    if ":" not in text and "=" in text:
        return parse_overrides(text, "--base")
    name, overrides = parse_spec(text)
    if name not in VARIANTS:
        raise UsageError(f"--base {text}: unknown model {name!r}; choose from "
                         f"{', '.join(VARIANTS)} (or give key=value,... alone)")
    return overrides


def slug(spec: str) -> str:
    """A folder name for a variant spec: ``ebm:a=1,b=2`` -> ``ebm__a-1_b-2``."""
    name = spec.replace(":", "__").replace(",", "_").replace("=", "-")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise UsageError(f"{spec!r}: use letters, digits, '_', '-', '.' in variant specs")
    return name


def run_config(spec: str, seed: int, config: CompareConfig) -> FitConfig:
    """The training config of variant ``spec`` with train seed ``seed``."""
    cfg = variant_config(spec, config.base)
    return replace(cfg, train=replace(cfg.train, seed=seed, progress=config.eval.progress))


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
    if not (run / MODEL_FILE).exists():
        fit_model(data, run, run_config(spec, seed, config), config.eval.device,
                  resume=(run / "checkpoint.pt").exists())
    if not (run / EVAL_FILE).exists():
        model = load_model(run, config.eval.device)
        k = model.config.context
        test = load_test_set(data, model.split, k, config.eval.max_episodes)
        ecfg = replace(config.eval, seed=seed)
        t0 = time.perf_counter()
        pred = predict_test(model, test, ecfg)
        seconds = time.perf_counter() - t0
        with physics_checker(test.info, model.config.conditional) as checker:
            scores = score_predictions(pred, test, k, ecfg, checker)
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


def _test_set(data: str | os.PathLike, configs: list[FitConfig], cfg: CompareConfig
              ) -> tuple[TestSet, int]:
    """The test split all variants share, and the horizon they can be scored over."""
    splits = {(c.split_seed, c.test_fraction) for c in configs}
    if len(splits) > 1:
        raise UsageError(f"the variants would be trained on different splits {sorted(splits)} "
                         f"(split_seed, test_fraction); compare them separately")
    seed, fraction = splits.pop()
    k = max(c.model.context for c in configs)
    test = load_test_set(data, {"seed": seed, "test_fraction": fraction}, k,
                         cfg.eval.max_episodes)
    return test, usable_horizon(cfg.eval.horizon, test.states.shape[1], k)


def compare(data: str | os.PathLike, specs: list[str], out_dir: str | os.PathLike,
            config: CompareConfig | None = None, resume: bool = False) -> dict[str, Any]:
    """Train and score every spec with seeds 0..N-1 into ``out_dir``; return the summary.

    A horizon longer than the test trajectories allow is cut to what they hold, with a warning.
    """
    cfg = config or CompareConfig()
    if not specs:
        raise UsageError("give at least one model variant")
    if len(set(specs)) != len(specs):
        raise UsageError("each model variant may be named once")
    configs = [variant_config(spec, cfg.base) for spec in specs]
    names = {spec: slug(spec) for spec in specs}
    if len(set(names.values())) != len(names):
        raise UsageError("two variant specs map to the same folder name")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    if (out / PLAN_FILE).exists():
        if not resume:
            raise UsageError(f"{out} already holds a comparison; pass --resume to continue it "
                             f"or choose another --out")
        check_resume(out, data, cfg)
    test, horizon = _test_set(data, configs, cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / PLAN_FILE, {"data": str(data), "specs": specs, "seeds": cfg.seeds,
                                 "config": jsonable(cfg)})
    write_run_info(out, cfg, None, data=str(data), specs=specs)
    run_cfg = replace(cfg, eval=replace(cfg.eval, horizon=horizon))
    tasks = [(str(data), spec, s, str(out / names[spec] / f"seed{s}"), run_cfg)
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
    atomic_write_bytes(out / "scores.md", scores_summary_markdown(summary).encode())
    plot_bands(summary, out / "fd.png")
    plot_calibration({spec: entry["scores"]["calibration"]
                      for spec, entry in summary["variants"].items()}, out / "calibration.png")
    return summary


def check_resume(out: Path, data: str | os.PathLike, config: CompareConfig) -> None:
    """Refuse to resume the comparison in ``out`` with another dataset or with settings that
    its finished runs were not made with (each run is reused by its variant's name alone).
    Adding variants or seeds, or changing the report's settings (:data:`RESUME_FREE`), is fine.
    """
    path = out / PLAN_FILE
    try:
        plan = json.loads(path.read_text())
        before = from_dict(CompareConfig, plan["config"])
        data_before = Path(plan["data"])
    except (OSError, ValueError, TypeError, KeyError, UsageError) as err:
        raise UsageError(f"{path}: not a readable comparison plan ({err}); choose another "
                         f"--out") from None
    changed = sorted(k for k in differences(config, before) if k not in RESUME_FREE)
    if data_before.resolve() != Path(data).resolve():
        changed.insert(0, f"data (was {data_before})")
    if changed:
        raise UsageError(f"{out} was started with other settings ({', '.join(changed)}); "
                         f"resume with the same ones or choose another --out")


def _fd_stat(pred: np.ndarray, truth: np.ndarray, t: int, dims: np.ndarray,
             chunk: int = 250) -> Callable[[np.ndarray], np.ndarray]:
    """FD at step t between resampled rows of predictions and truth, averaged over samples."""
    p = np.moveaxis(pred[:, :, t][..., dims], 1, 0)
    y = truth[:, t][..., dims]

    def stat(idx: np.ndarray) -> np.ndarray:
        return np.concatenate([frechet_distance_resampled(p, y, idx[lo : lo + chunk]).mean(0)
                               for lo in range(0, len(idx), chunk)])

    return stat


def _variant_summary(runs: list[Mapping[str, np.ndarray]], truth: np.ndarray,
                     groups: dict[str, np.ndarray], steps: list[int], band_steps: list[int],
                     cfg: CompareConfig) -> dict[str, Any]:
    """Medians over the seeds' runs of one variant, with bootstrap intervals."""
    n = len(truth)
    preds = [r["pred"] for r in runs]
    entry: dict[str, Any] = {}
    for g, dims in groups.items():
        for t in steps:
            stats = [_fd_stat(p, truth, t - 1, dims) for p in preds]
            key = f"fd@{t}" if g == "state" else f"{g} fd@{t}"
            entry[key] = median_over_seeds(stats, [n] * len(stats), recenter=True,
                                           resamples=cfg.resamples).as_dict()
            entry[key]["per_seed"] = [float(s(np.arange(n)[None])[0]) for s in stats]
    entry["mse"] = median_interval(np.stack([r["mse_per_start"] for r in runs]),
                                   resamples=cfg.resamples).as_dict()
    physics = [r["physics_per_start"] for r in runs]
    entry["physics_error"] = (median_interval(np.stack(physics), resamples=cfg.resamples)
                              .as_dict() if all(len(p) for p in physics) else None)
    entry["train_seconds"] = float(np.nanmedian([float(r["train_seconds"]) for r in runs]))
    band = [median_over_seeds([_fd_stat(p, truth, t, groups["state"]) for p in preds],
                              [n] * len(preds), resamples=cfg.band_resamples, recenter=True)
            for t in band_steps]
    entry["band"] = {"median": [b.value for b in band], "low": [b.low for b in band],
                     "high": [b.high for b in band]}
    return entry


def summarize(out: Path, specs: list[str], names: dict[str, str], cfg: CompareConfig,
              test: TestSet) -> dict[str, Any]:
    """Medians over seeds with bootstrap intervals per variant; pairwise P(improvement)."""
    runs = {spec: [np.load(out / names[spec] / f"seed{s}" / EVAL_FILE)
                   for s in range(cfg.seeds)] for spec in specs}
    k = int(runs[specs[0]][0]["context"])
    horizon = runs[specs[0]][0]["pred"].shape[2]
    truth = test.stats.normalize(test.states[:, k : k + horizon]).astype(np.float64)
    groups = test.groups()
    steps = [min(t, horizon) for t in REPORT_STEPS]
    band_steps = sorted({*range(cfg.band_every - 1, horizon, cfg.band_every), horizon - 1})
    floor = floor_groups(test.stats.normalize(test.train_states[:, k : k + horizon]), truth,
                         groups, 0)
    result: dict[str, Any] = {
        "data": str(test.info.dataset_id), "split": test.split, "test_starts": len(truth),
        "seeds": cfg.seeds, "samples": cfg.eval.samples, "horizon": horizon,
        "fd_warning": check_fd_size(test), "confidence": 0.95, "resamples": cfg.resamples,
        "floor": {g: {f"fd@{t}": float(f[t - 1]) for t in steps} for g, f in floor.items()},
        "floor_curve": floor["state"].tolist(), "band_steps": [t + 1 for t in band_steps],
        "variants": {}}
    for spec in specs:
        entry = {"folder": names[spec],
                 **_variant_summary(runs[spec], truth, groups, steps, band_steps, cfg)}
        entry["scores"] = score_summary([starts_scored(r["pred"], truth, groups)
                                         for r in runs[spec]],
                                        runs[spec][0]["pred"].shape[1], resamples=cfg.resamples)
        result["variants"][spec] = entry
    per_seed_fd = {spec: result["variants"][spec][f"fd@{steps[-1]}"]["per_seed"]
                   for spec in specs}
    result["probability_of_improvement"] = {
        a: {b: probability_of_improvement(per_seed_fd[a], per_seed_fd[b],
                                          resamples=cfg.resamples).as_dict()
            for b in specs if b != a} for a in specs}
    result["poi_metric"] = f"fd@{steps[-1]}"
    result["score_poi"] = _score_poi(result["variants"], cfg.resamples)
    return result


def _score_poi(variants: dict[str, Any], resamples: int) -> dict[str, Any]:
    """P(the row's energy score is lower than the column's) across seeds, at each report step
    and over the trajectory."""
    first = next(iter(variants.values()))["scores"]
    keys = [k for k in first if k.startswith("es@")] + ["es"]
    return {key: {a: {b: probability_of_improvement(
        variants[a]["scores"][key]["per_seed"], variants[b]["scores"][key]["per_seed"],
        resamples=resamples).as_dict() for b in variants if b != a} for a in variants}
        for key in keys}


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
        cells = [format_interval(entry.get(k)) for k in keys]
        lines.append(f"| {spec} | " + " | ".join(cells) + f" | {entry['train_seconds']:.0f} |")
    lines += _poi_table(summary["probability_of_improvement"], summary["poi_metric"])
    if summary.get("fd_warning"):
        lines += ["", f"Warning: {summary['fd_warning']}."]
    return "\n".join(lines) + "\n"


def _poi_table(poi: dict[str, dict[str, Any]], metric: str) -> list[str]:
    """Lines of a table of P(the row's ``metric`` is lower than the column's)."""
    specs = list(poi)
    lines = ["", f"Probability that the row's {metric} is lower than the column's (across "
             f"seeds; 0.5 = no difference):", "",
             "| | " + " | ".join(specs) + " |", "|" + "---|" * (len(specs) + 1)]
    for a in specs:
        cells = ["–" if a == b else f"{poi[a][b]['value']:.2f}" for b in specs]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return lines


def scores_summary_markdown(summary: dict[str, Any]) -> str:
    """The proper scores per start as markdown (``scores.md``): medians [95% interval] per
    variant, then P(improvement) of the energy score over the trajectory."""
    scores = {spec: entry["scores"] for spec, entry in summary["variants"].items()}
    lines = [f"Proper scores per start (z units; median over {summary['seeds']} seeds of the "
             f"mean over starts [95% bootstrap interval]; lower ES and CRPS are better, "
             f"coverage near 0.5 and 0.9 and spread_skill near 1 are calibrated):", "",
             scores_markdown(scores), *_poi_table(summary["score_poi"]["es"], "energy score es")]
    return "\n".join(lines) + "\n"


def plot_bands(summary: dict[str, Any], path: Path) -> None:
    """FD over the horizon: median over seeds and its 95% interval as a band, per variant."""
    plt = pyplot()
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
