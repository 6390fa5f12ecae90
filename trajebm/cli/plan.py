"""`trajebm plan`: plan goal-directed hand control with a model (or the simulator), judged in
MuJoCo; ``--compare`` plans models × planners × tasks × seeds and reports medians.

One command, one mode per call: a planning run (:func:`trajebm.plan.plan`), the comparison
(:func:`trajebm.plan.matrix.compare_plans`), the online loop of planning, collecting and
retraining (``--iterations K``: :func:`trajebm.plan.online.online`). Options of one mode given
to another are refused, so nothing is silently ignored.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from trajebm.cli.options import add_option, add_options, config_from
from trajebm.engine.errors import UsageError
from trajebm.plan import PlanConfig, plan
from trajebm.plan.matrix import PlanCompareConfig, compare_plans, summary_markdown
from trajebm.plan.online import OnlineConfig, online

ONE_RUN = {"model": "--model", "task": "--task", "planner": "--planner", "seed": "--seed",
           "replan_every": "--replan-every", "video": "--no-video"}
"""Options of a single planning run (dest: flag)."""
COMPARISON = {"models": "--models", "tasks": "--tasks", "planners": "--planners",
              "seeds": "--seeds", "budgets": "--budgets", "resamples": "--resamples",
              "resume": "--resume"}
"""Options of ``--compare`` (dest: flag)."""
ONLINE = {"iterations": "--iterations", "data": "--data",
          "collect_episodes": "--collect-episodes", "exploration": "--exploration",
          "steps": "--steps", "model": "--model", "task": "--task", "planner": "--planner",
          "seed": "--seed"}
"""Options of the online loop ``--iterations K`` (dest: flag)."""
MODES = {"one": ONE_RUN, "compare": COMPARISON, "online": ONLINE}
"""Each mode's own options."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register ``trajebm plan``."""
    p = subparsers.add_parser(
        "plan", help="plan hand control for goals with a model; judged in MuJoCo",
        description="Plan goal-directed control of the Shadow hand's block with a trajectory "
                    "model (or the simulator: --planner oracle) and execute it in MuJoCo; "
                    "--compare plans models x planners x tasks x seeds.")
    p.add_argument("--out", required=True, help="output folder")
    one = p.add_argument_group("a planning run")
    one.add_argument("--model", default=None,
                     help="run folder (or model.pt) of `trajebm train`; not needed for "
                          "--planner oracle or random")
    add_option(one, PlanConfig, "task")
    add_option(one, PlanConfig, "planner")
    add_option(one, PlanConfig, "seed")
    add_option(one, PlanConfig, "replan_every")
    add_option(one, PlanConfig, "video", "--no-video",
               help="no video of the best and the worst episode")
    shared = p.add_argument_group("both modes")
    add_option(shared, PlanConfig, "episodes")
    add_option(shared, PlanConfig, "length")
    add_option(shared, PlanConfig, "env_id", "--env")
    add_option(shared, PlanConfig, "horizon")
    add_option(shared, PlanConfig, "budget")
    add_option(shared, PlanConfig, "workers")
    add_option(shared, PlanConfig, "progress", "--quiet", help="no progress bars")
    many = p.add_argument_group("comparison (--compare)")
    many.add_argument("--compare", action="store_true",
                      help="plan every model with every planner on every task and seed")
    many.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                      help="run folders, run-folder patterns with {seed} (seed s plans with "
                           "that seed's model), oracle or random")
    add_option(many, PlanCompareConfig, "tasks")
    add_option(many, PlanCompareConfig, "planners")
    add_option(many, PlanCompareConfig, "seeds")
    add_option(many, PlanCompareConfig, "budgets",
               help="budgets per control step for the success-vs-budget figure (default: "
                    "none, no figure)")
    add_option(many, PlanCompareConfig, "resamples")
    many.add_argument("--resume", action="store_true",
                      help="continue the comparison in --out (finished runs are reused)")
    loop = p.add_argument_group("online loop (--iterations K; --episodes: evaluation goals)")
    add_option(loop, OnlineConfig, "iterations", default=None)
    loop.add_argument("--data", default=None,
                      help="the dataset --model was trained on (grown by each iteration)")
    add_options(loop, OnlineConfig, ("collect_episodes", "exploration", "steps"))
    p.set_defaults(func=partial(run, parser=p))


def mode_of(args: argparse.Namespace) -> str:
    """Which mode the options ask for."""
    return "compare" if args.compare else "online" if args.iterations is not None else "one"


def check_mode(args: argparse.Namespace, parser: argparse.ArgumentParser, mode: str) -> None:
    """UsageError for an option of another mode (one given a value other than its default)."""
    for other, options in MODES.items():
        if other == mode:
            continue
        for dest, flag in options.items():
            if dest not in MODES[mode] and getattr(args, dest) != parser.get_default(dest):
                wanted = {"compare": "--compare", "online": "the online loop (--iterations)",
                          "one": "a single planning run"}[other]
                raise UsageError(f"{flag} belongs to {wanted}")


def run_one(args: argparse.Namespace) -> int:
    """:func:`trajebm.plan.plan` with the options' config; print its summary."""
    cfg = config_from(PlanConfig, args)
    summary = plan(args.model, args.out, cfg)
    print(f"{summary['task']} with {summary['planner']}: success {summary['success_rate']:.2f} "
          f"of {summary['episodes']}, median final error {summary['final_error']:.3g}, "
          f"{summary['ms_per_step']:.3g} ms per control step")
    print(f"wrote {Path(args.out) / 'episodes.npz'}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """:func:`trajebm.plan.matrix.compare_plans` with the options' config; print the report."""
    if not args.models:
        raise UsageError("--compare needs --models (run folders, {seed} patterns, oracle, "
                         "random)")
    cfg = config_from(PlanCompareConfig, args)
    summary = compare_plans(args.models, args.out, cfg, resume=args.resume)
    print(summary_markdown(summary))
    print(f"wrote {Path(args.out) / 'summary.md'}")
    return 0


def run_online(args: argparse.Namespace) -> int:
    """:func:`trajebm.plan.online.online` with the options' config; print success per
    iteration."""
    if args.model is None or args.data is None:
        raise UsageError("the online loop needs --model (the starting model) and --data (the "
                         "dataset it was trained on)")
    cfg = config_from(OnlineConfig, args, eval_episodes=args.episodes)
    report = online(args.model, args.data, args.out, cfg)
    for row in report["iterations"]:
        print(f"iteration {row['iteration']}: success {row['success_rate']:.2f}, median final "
              f"error {row['final_error']:.3g}")
    print(f"wrote {Path(args.out) / 'online.json'}")
    return 0


RUNNERS = {"one": run_one, "compare": run_compare, "online": run_online}
"""Each mode's runner."""


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the mode the options ask for, refusing options of another mode."""
    mode = mode_of(args)
    check_mode(args, parser, mode)
    return RUNNERS[mode](args)
