"""`trajebm plan --compare`: models × planners × tasks × seeds, planned and judged in MuJoCo.

A model entry is a run folder, a run-folder pattern holding ``{seed}`` (seed s plans with the
model trained with seed s, e.g. ``runs/plan-models/ensemble-s{seed}``), or ``oracle`` /
``random`` (no model: MPPI on the true simulator, uniform random actions); ``ENTRY@p1+p2``
plans that model with planners p1 and p2 only. Every cell — model,
planner, task, seed (and budget, for the success-vs-budget figure) — is one
:func:`trajebm.plan.run_plan` with that seed: different resets and goals per seed, the same ones
for every model and planner. Each cell keeps ``episodes.npz`` and ``summary.json`` under
``OUT/<model>/<planner>/<task>/seed<s>/`` (``.../<task>/budget<b>/seed<s>/`` for the budget
sweep); a cell whose summary exists is reused, so an interrupted comparison resumes.

The report (``summary.json``, ``summary.md``, ``success_budget.png`` when budgets are given),
per task and (model, planner): the median success rate over seeds with a 95% bootstrap interval
(over seeds and episodes), the median final error and the self-deception gap (predicted minus
achieved final error, in the task's units) with intervals, the median planning time per control
step, and the probability that one row succeeds more often than another across seeds.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from trajebm.engine.errors import UsageError
from trajebm.engine.plotting import pyplot
from trajebm.engine.runinfo import atomic_write_bytes, jsonable, write_json, write_run_info
from trajebm.engine.stats import median_interval, median_over_seeds, probability_of_improvement
from trajebm.modelio import load_model
from trajebm.models import TrajectoryModel
from trajebm.plan.episodes import DEFAULT_ENV
from trajebm.plan.job import (
    BEST_PLANNER,
    BUDGET,
    PLANNERS,
    PlanConfig,
    check_model,
    make_planner,
    open_simulator,
    run_plan,
)
from trajebm.plan.tasks import TASKS

RECORD = "plan_compare.json"
"""What a comparison folder holds besides its cells: the entries and the settings."""
MODEL_FREE = ("oracle", "random")
"""Model entries that plan without a model (each with the planner of its name)."""
CELL_SETTINGS = ("episodes", "length", "env_id", "horizon", "budget")
"""The settings a finished cell depends on: a resumed comparison must keep them."""
UNITS = {"rotate": "rad", "pose": "rad", "move": "m", "lift": "m"}
"""The units of each task's errors."""


@dataclass
class PlanCompareConfig:
    """Tasks, planners, seeds and episode settings of a planning comparison."""

    tasks: tuple[str, ...] = tuple(TASKS)
    """Tasks to plan: rotate | pose | move | lift."""
    planners: tuple[str, ...] | None = None
    """Planners for every model (mppi | cem | shooting | langevin); default: each model kind's
    best. A pair that cannot work (langevin without an energy, shooting without a regression
    model) is skipped and listed."""
    seeds: int = 5
    """Run seeds 0..N-1 (resets, goals, planner noise; a {seed} pattern's model)."""
    episodes: int = 30
    """Episodes (goals) per seed and task."""
    length: int = 50
    """Control steps per episode."""
    env_id: str = DEFAULT_ENV
    """The hand env every model plans in."""
    horizon: int | None = None
    """Planning horizon in control steps (default: each planner's)."""
    budget: int | None = None
    """Budget per control step of the main table (default: each planner's; see PlanConfig)."""
    budgets: tuple[int, ...] = ()
    """Budgets of the success-vs-budget figure (empty: no figure)."""
    workers: int = 1
    """Simulator threads."""
    resamples: int = 1000
    """Bootstrap resamples."""
    progress: bool = True
    """Show a progress bar over the cells."""

    def __post_init__(self) -> None:
        self.tasks, self.budgets = tuple(self.tasks), tuple(int(b) for b in self.budgets)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise UsageError("give each task once, at least one")
        for task in self.tasks:
            if task not in TASKS:
                raise UsageError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
        if self.planners is not None:
            self.planners = tuple(self.planners)
            if not self.planners or len(set(self.planners)) != len(self.planners):
                raise UsageError("give each planner once, at least one")
            for name in self.planners:
                if name in MODEL_FREE:
                    raise UsageError(f"the {name} planner needs no model: name {name!r} among "
                                     f"the models instead")
                if name not in PLANNERS:
                    raise UsageError(f"unknown planner {name!r}; choose from "
                                     f"{', '.join(p for p in PLANNERS if p not in MODEL_FREE)}")
        for name in ("seeds", "episodes", "length", "horizon", "budget", "workers",
                     "resamples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"{name} must be positive, got {value}")
        if any(b <= 0 for b in self.budgets) or len(set(self.budgets)) != len(self.budgets):
            raise UsageError(f"budgets must be positive and distinct, got {list(self.budgets)}")

    def cell(self, task: str, planner: str, seed: int, budget: int | None) -> PlanConfig:
        """The planning run of one cell."""
        return PlanConfig(task=task, planner=planner, episodes=self.episodes,
                          length=self.length, seed=seed, env_id=self.env_id,
                          horizon=self.horizon, budget=budget, workers=self.workers,
                          video=False, progress=False)


@dataclass
class Entry:
    """One model entry: its label (as given), folder, model per seed, and planners."""

    label: str
    folder: str
    models: list[TrajectoryModel | None]
    planners: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


def safe_name(text: str) -> str:
    """A folder name for ``text``: runs of other characters than letters, digits, '_', '-',
    '.' become '_' (``{seed}`` becomes ``seed``)."""
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", text.replace("{seed}", "seed")).strip("_.")
    return name or "model"


def folder_names(labels: list[str], known: dict[str, str] | None = None) -> dict[str, str]:
    """Distinct folder names: those ``known`` (a resumed comparison's), else the shortest tail
    of each path that tells it apart from the others."""
    known = {label: f for label, f in (known or {}).items()}
    new = [label for label in labels if label not in known]
    parts = {label: [p for p in Path(label).parts if p not in ("/", ".")] for label in new}
    deepest = max((len(p) for p in parts.values()), default=1)
    for depth in range(1, deepest + 1):
        names = {label: safe_name("_".join(p[-depth:])) for label, p in parts.items()}
        if len({*names.values(), *known.values()}) == len(names) + len(known):
            return {**{label: known[label] for label in labels if label in known}, **names}
    raise UsageError("two models map to the same folder name; give distinct run folders")


def resolve_entries(models: list[str], cfg: PlanCompareConfig, simulator,
                    known: dict[str, str] | None = None) -> list[Entry]:
    """Load every model entry (each seed's, for a pattern), check it can plan in the
    simulator's env, and pair it with its planners (``known``: folders of a resumed
    comparison's entries); UsageError before anything is written."""
    if not models:
        raise UsageError("give at least one model (a run folder, a {seed} pattern, oracle or "
                         "random)")
    if len(set(models)) != len(models):
        raise UsageError("each model may be named once")
    folders = folder_names(models, known)
    entries = []
    for label in models:
        if label in MODEL_FREE:
            entries.append(Entry(label, folders[label], [None] * cfg.seeds, [label]))
            continue
        path, _, only = label.partition("@")
        if "{seed}" in path:
            loaded = [load_model(path.replace("{seed}", str(s))) for s in range(cfg.seeds)]
        else:
            loaded = [load_model(path)] * cfg.seeds
        kinds = {m.kind for m in loaded}
        if len(kinds) > 1:
            raise UsageError(f"{label}: the seeds' models are of different kinds "
                             f"({', '.join(sorted(kinds))})")
        for model in dict.fromkeys(loaded):
            check_model(model, simulator)
        entry = Entry(label, folders[label], loaded, [])
        chosen = tuple(only.split("+")) if only else None
        for name in chosen or cfg.planners or (BEST_PLANNER[loaded[0].kind],):
            if name not in PLANNERS or name in MODEL_FREE:
                raise UsageError(f"{label}: unknown planner {name!r} after '@'")
            try:
                make_planner(name, cfg.cell(cfg.tasks[0], name, 0, cfg.budget), loaded[0],
                             simulator)
            except UsageError as err:
                entry.skipped[name] = str(err)
                continue
            except ValueError as err:  # a planner's own size check (e.g. a population of 1)
                raise UsageError(f"{name}: {err}") from None
            entry.planners.append(name)
        if not entry.planners:
            reasons = "; ".join(entry.skipped.values())
            raise UsageError(f"{label}: none of the planners can plan with it ({reasons})")
        entries.append(entry)
    return entries


def cell_dir(out: Path, entry: Entry, planner: str, task: str, seed: int,
             budget: int | None = None) -> Path:
    """Where one cell's files live."""
    where = out / entry.folder / planner / task
    return (where if budget is None else where / f"budget{budget}") / f"seed{seed}"


def finished(folder: Path) -> bool:
    """Whether a cell's files are there (its summary is written last)."""
    return (folder / "summary.json").exists() and (folder / "episodes.npz").exists()


def run_cell(model: TrajectoryModel | None, cfg: PlanConfig, simulator, folder: Path
             ) -> dict[str, Any]:
    """Plan one cell into ``folder`` (``episodes.npz``, then ``summary.json``) unless its
    summary exists; return the summary. Torch is seeded with the cell's seed, so a cell gives
    the same episodes whatever ran before it."""
    done = folder / "summary.json"
    if finished(folder):
        return json.loads(done.read_text())
    torch.manual_seed(cfg.seed)
    episodes = run_plan(model, cfg, simulator)
    buf = io.BytesIO()
    np.savez(buf, **episodes.arrays())
    atomic_write_bytes(folder / "episodes.npz", buf.getvalue())
    summary = {**episodes.summary(), "seed": cfg.seed, "budget": cfg.budget}
    write_json(done, summary)
    return summary


Cell = tuple[Entry, str, str, int, "int | None"]
"""(entry, planner, task, seed, budget or None for the main table)."""


def _cells(entries: list[Entry], cfg: PlanCompareConfig) -> list[Cell]:
    """Every cell: (entry, planner, task, seed, budget or None for the main table)."""
    cells = []
    for entry in entries:
        for planner in entry.planners:
            sweep = [b for b in cfg.budgets if b != cfg.budget] if planner in BUDGET else []
            for task in cfg.tasks:
                for budget in (None, *sweep):
                    cells += [(entry, planner, task, s, budget) for s in range(cfg.seeds)]
    return cells


def _check_resume(out: Path, cfg: PlanCompareConfig, resume: bool) -> dict[str, str]:
    """UsageError unless ``out`` can take this comparison; the folders of its entries so far."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    if not (out / RECORD).exists():
        return {}
    if not resume:
        raise UsageError(f"{out} already holds a planning comparison; pass --resume to continue "
                         f"it or choose another --out")
    record = json.loads((out / RECORD).read_text())
    before, now = record["config"], jsonable(cfg)
    for key in CELL_SETTINGS:
        if before.get(key) != now[key]:
            raise UsageError(f"{out} was planned with {key}={before.get(key)}, not {now[key]}; "
                             f"resume with the same settings or choose another --out")
    return record.get("folders", {})


def compare_plans(models: list[str], out_dir: str | os.PathLike,
                  config: PlanCompareConfig | None = None, resume: bool = False
                  ) -> dict[str, Any]:
    """Plan every model entry with its planners on every task and seed into ``out_dir``;
    write and return the report (module docstring)."""
    cfg = config or PlanCompareConfig()
    out = Path(out_dir)
    known = _check_resume(out, cfg, resume)
    simulator = open_simulator(cfg.env_id, cfg.workers)
    try:
        entries = resolve_entries(list(models), cfg, simulator, known)
        out.mkdir(parents=True, exist_ok=True)
        folders = {**known, **{e.label: e.folder for e in entries}}
        write_json(out / RECORD, {"models": list(models), "folders": folders,
                                  "config": jsonable(cfg)})
        write_run_info(out, cfg, None, models=list(models))
        cells = _cells(entries, cfg)
        todo = [c for c in cells if not finished(cell_dir(out, *c))]
        bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="plan compare",
                   unit="run", disable=not cfg.progress, dynamic_ncols=True)
        for entry, planner, task, seed, budget in todo:
            bar.set_postfix_str(f"{entry.label} {planner} {task} s{seed}", refresh=False)
            run_cell(entry.models[seed],
                     cfg.cell(task, planner, seed, cfg.budget if budget is None else budget),
                     simulator, cell_dir(out, entry, planner, task, seed, budget))
            bar.update(1)
        bar.close()
    finally:
        simulator.close()
    summary = summarize(out, entries, cfg)
    write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "summary.md", summary_markdown(summary).encode())
    if cfg.budgets:
        plot_budgets(summary, out / "success_budget.png")
    return summary


def row_name(entry: Entry, planner: str) -> str:
    """A row of the report: the model entry, and its planner unless the entry names it."""
    return entry.label if entry.label in MODEL_FREE else f"{entry.label} ({planner})"


def _median_stat(values: np.ndarray):
    return lambda idx: np.median(values[idx], axis=1)


def _seed_cells(folders: list[Path], cfg: PlanCompareConfig) -> dict[str, Any]:
    """Statistics over the seeds' cells of one row (and budget)."""
    runs = []
    for f in folders:
        with np.load(f / "episodes.npz") as saved:
            runs.append(dict(saved))
    summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
    success = np.stack([r["success"] for r in runs]).astype(np.float64)
    errors = [np.asarray(r["final_error"], dtype=np.float64) for r in runs]
    gaps = [np.asarray(r["predicted_error"] - r["final_error"], dtype=np.float64)
            for r in runs]
    gaps = [g[np.isfinite(g)] for g in gaps]
    gaps = [g for g in gaps if len(g)]
    entry: dict[str, Any] = {
        "success": {**median_interval(success, resamples=cfg.resamples).as_dict(),
                    "per_seed": success.mean(1).tolist()},
        "final_error": median_over_seeds([_median_stat(e) for e in errors],
                                         [len(e) for e in errors],
                                         resamples=cfg.resamples).as_dict(),
        "self_deception": median_over_seeds([_median_stat(g) for g in gaps],
                                            [len(g) for g in gaps],
                                            resamples=cfg.resamples).as_dict() if gaps else None,
        "ms_per_step": float(np.median([s["ms_per_step"] for s in summaries])),
        "horizon": summaries[0].get("horizon")}
    return entry


def summarize(out: Path, entries: list[Entry], cfg: PlanCompareConfig) -> dict[str, Any]:
    """The report of finished cells: per task and row, medians with intervals; pairwise
    probabilities of improvement of success."""
    rows: dict[str, dict[str, Any]] = {task: {} for task in cfg.tasks}
    poi: dict[str, dict[str, Any]] = {}
    for task in cfg.tasks:
        for entry in entries:
            for planner in entry.planners:
                stats = _seed_cells([cell_dir(out, entry, planner, task, s)
                                     for s in range(cfg.seeds)], cfg)
                curve = []
                for budget in cfg.budgets if planner in BUDGET else ():
                    sweep = None if budget == cfg.budget else budget
                    point = _seed_cells([cell_dir(out, entry, planner, task, s, sweep)
                                         for s in range(cfg.seeds)], cfg)
                    curve.append({"budget": budget, "success": point["success"],
                                  "ms_per_step": point["ms_per_step"]})
                rows[task][row_name(entry, planner)] = {
                    "model": entry.label, "planner": planner,
                    "folder": f"{entry.folder}/{planner}/{task}", **stats,
                    "budget_curve": curve}
        per_seed = {name: row["success"]["per_seed"] for name, row in rows[task].items()}
        poi[task] = {a: {b: probability_of_improvement(per_seed[a], per_seed[b],
                                                       lower_is_better=False,
                                                       resamples=cfg.resamples).as_dict()
                         for b in per_seed if b != a} for a in per_seed}
    return {"env_id": cfg.env_id, "seeds": cfg.seeds, "episodes": cfg.episodes,
            "length": cfg.length, "horizon": cfg.horizon, "budget": cfg.budget,
            "budgets": list(cfg.budgets), "confidence": 0.95, "resamples": cfg.resamples,
            "units": {task: UNITS[task] for task in cfg.tasks},
            "tolerance": {task: TASKS[task].tolerance for task in cfg.tasks},
            "rows": rows, "probability_of_improvement": poi,
            "skipped": [{"model": e.label, "planner": p, "reason": why}
                        for e in entries for p, why in e.skipped.items()]}


def _cell(entry: dict[str, float] | None, digits: str = ".3g") -> str:
    if entry is None:
        return "–"
    return (f"{entry['value']:{digits}} [{entry['low']:{digits}}, "
            f"{entry['high']:{digits}}]")


def summary_markdown(summary: dict[str, Any]) -> str:
    """The report as markdown: a table per task, then P(row succeeds more often than col)."""
    lines = [f"Median over {summary['seeds']} seeds [95% bootstrap interval over seeds and "
             f"{summary['episodes']} episodes per seed]; {summary['length']} control steps per "
             f"episode in {summary['env_id']}. Self-deception: the final error the plan "
             f"predicted minus the one MuJoCo produced (negative: the model was "
             f"over-optimistic). ms/step: planning time per control step and episode, the "
             f"episodes planned in one batch.", ""]
    for task, rows in summary["rows"].items():
        unit = summary["units"][task]
        lines += [f"## {task} (errors in {unit}; success within "
                  f"{summary['tolerance'][task]:g} {unit}, never dropped)", "",
                  "| model | planner | success | final error | self-deception | ms/step |",
                  "|---|---|---|---|---|---|"]
        for row in rows.values():
            lines.append(f"| {row['model']} | {row['planner']} | {_cell(row['success'], '.2f')}"
                         f" | {_cell(row['final_error'])} | {_cell(row['self_deception'])} | "
                         f"{row['ms_per_step']:.3g} |")
        names = list(rows)
        if len(names) > 1:
            poi = summary["probability_of_improvement"][task]
            lines += ["", "Probability that the row succeeds more often than the column "
                      "(across seeds; 0.5 = no difference):", "",
                      "| | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
            for a in names:
                cells = ["–" if a == b else f"{poi[a][b]['value']:.2f}" for b in names]
                lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
    for skip in summary["skipped"]:
        lines.append(f"Skipped {skip['model']} with {skip['planner']}: {skip['reason']}.")
    return "\n".join(lines).rstrip() + "\n"


def plot_budgets(summary: dict[str, Any], path: Path) -> None:
    """Success against planning budget per task: median over seeds and its interval per row;
    rows without a budget (random) as dashed lines."""
    plt = pyplot()
    tasks = list(summary["rows"])
    names = list(dict.fromkeys(n for rows in summary["rows"].values() for n in rows))
    legend_rows = (len(names) + 1) // 2
    fig, axes = plt.subplots(1, len(tasks), squeeze=False,
                             figsize=(max(4.2 * len(tasks), 7.0), 3.8 + 0.2 * legend_rows))
    colors = plt.get_cmap("tab10" if len(names) <= 10 else "tab20").colors
    color = {n: colors[i % len(colors)] for i, n in enumerate(names)}
    for ax, task in zip(axes[0], tasks, strict=True):
        for name, row in summary["rows"][task].items():
            curve = row["budget_curve"]
            if not curve:
                ax.axhline(row["success"]["value"], color=color[name], ls="--", label=name)
                continue
            x = [p["budget"] for p in curve]
            mid = [p["success"]["value"] for p in curve]
            ax.plot(x, mid, "o-", color=color[name], label=name)
            ax.fill_between(x, [p["success"]["low"] for p in curve],
                            [p["success"]["high"] for p in curve], color=color[name],
                            alpha=0.15)
        ax.set(xscale="log", ylim=(-0.03, 1.03), title=task, xlabel="budget per control step",
               ylabel="success rate")
        ax.set_xticks(summary["budgets"], [str(b) for b in summary["budgets"]])
        ax.minorticks_off()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=2)
    fig.suptitle(f"median over {summary['seeds']} seeds, 95% interval (budget: candidates, "
                 f"population, gradient or Langevin steps)", fontsize=9)
    fig.tight_layout(rect=(0, (0.2 * legend_rows + 0.1) / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
