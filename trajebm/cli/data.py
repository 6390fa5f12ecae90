"""`trajebm collect` and `trajebm dataset info|render|merge`: thin wrappers over trajebm.data.

Only the settings dataclasses are imported here; the collection, reading and rendering code
(and with it MuJoCo) loads when a command runs, so ``trajebm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from trajebm.cli.options import add_option, add_options, config_from
from trajebm.data.collection import CollectConfig
from trajebm.data.policies import PolicyConfig
from trajebm.data.randomize import describe_parameters, parse_randomize
from trajebm.engine.errors import UsageError
from trajebm.engine.settings import field_docs


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``collect`` and ``dataset`` subcommands."""
    _register_collect(subparsers)
    d = subparsers.add_parser("dataset", help="inspect or render a collected dataset")
    sub = d.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    info = sub.add_parser("info", help="print a summary of a dataset")
    info.add_argument("path", help="dataset folder DIR")
    info.set_defaults(func=run_info)
    render = sub.add_parser("render", help="render an episode to .mp4/.gif or a .png strip")
    render.add_argument("path", help="dataset folder DIR")
    render.add_argument("--episode", type=int, default=0)
    render.add_argument("--out", required=True, help="video.mp4 | video.gif | strip.png")
    render.add_argument("--width", type=int, default=256)
    render.add_argument("--height", type=int, default=256)
    render.add_argument("--every", type=int, default=1, help="render every n-th state")
    render.set_defaults(func=run_render)
    merge = sub.add_parser("merge", help="join the shards of a collection into one dataset")
    merge.add_argument("shards", nargs="+", metavar="SHARD_DIR", help="shard folders")
    merge.add_argument("--out", required=True, help="dataset folder DIR to create")
    merge.add_argument("--dataset-id", default=None, help="minari dataset id (default from DIR)")
    merge.set_defaults(func=run_merge)


def _register_collect(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("collect", help="collect Shadow-hand trajectories (Minari layout)")
    add_option(p, CollectConfig, "env_id", "--env")
    add_option(p, CollectConfig, "episodes", required=True, help="number of trajectories N")
    add_option(p, CollectConfig, "length")
    add_option(p, PolicyConfig, "name", "--policy", metavar="POLICY")
    add_option(p, PolicyConfig, "random_every", metavar="K")
    add_option(p, PolicyConfig, "action_noise", metavar="SIGMA")
    add_option(p, CollectConfig, "randomize", type=str, nargs=None, default=None,
               metavar="NAME=LO:HI,...",
               help=f"{field_docs(CollectConfig)['randomize']} Names: {describe_parameters()}.")
    add_option(p, CollectConfig, "actuation_noise", metavar="SIGMA")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="collect only shard I of N (a contiguous block of episodes); join the "
                        "shards with `trajebm dataset merge`")
    add_option(p, CollectConfig, "include_velocities", "--velocities")
    p.add_argument("--out", required=True, help="dataset folder DIR (DIR/data/...)")
    p.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    add_options(p, CollectConfig, ["seed"])
    add_option(p, CollectConfig, "chunk_episodes", "--chunk")
    p.add_argument("--dataset-id", default=None, help="minari dataset id (default from DIR)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="finish an interrupted collection")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run_collect)


def run_collect(args: argparse.Namespace) -> int:
    """``trajebm collect``: :func:`trajebm.data.collect` with the options' config."""
    from trajebm.data.collection import collect
    from trajebm.data.shards import parse_shard, shard_ids

    if args.workers is not None and args.workers <= 0:
        raise UsageError(f"--workers must be positive, got {args.workers}")
    shard = parse_shard(args.shard) if args.shard is not None else None
    if ":" in args.name and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # module:function may name a module in the cwd
    randomize = parse_randomize(args.randomize) if args.randomize is not None else ()
    cfg = config_from(CollectConfig, args, policy=config_from(PolicyConfig, args),
                      randomize=randomize)
    data_dir = collect(cfg, args.out, workers=args.workers, resume=args.resume,
                       overwrite=args.overwrite, dataset_id=args.dataset_id,
                       progress=args.progress, shard=shard)
    n = len(shard_ids(cfg.episodes, *shard)) if shard else cfg.episodes
    print(f"wrote {n} episodes x {cfg.length} steps to {data_dir}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    """``trajebm dataset merge``: :func:`trajebm.data.merge_shards`."""
    from trajebm.data.shards import merge_shards

    data_dir = merge_shards(args.shards, args.out, dataset_id=args.dataset_id)
    print(f"merged {len(args.shards)} shards into {data_dir}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """``trajebm dataset info``: :func:`trajebm.data.dataset_info`, formatted."""
    from trajebm.data.dataset import dataset_info, format_info

    print(format_info(dataset_info(args.path)))
    return 0


def run_render(args: argparse.Namespace) -> int:
    """``trajebm dataset render``: :func:`trajebm.data.render_episode`."""
    from trajebm.data.render import render_episode

    out = render_episode(args.path, args.episode, args.out, args.width, args.height, args.every)
    print(f"wrote {out}")
    return 0
