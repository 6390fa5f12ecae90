"""`trajebm collect` and `trajebm dataset info|render|merge`: thin wrappers over trajebm.data."""

from __future__ import annotations

import argparse
import os
import sys

from trajebm.engine.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``collect`` and ``dataset`` subcommands."""
    p = subparsers.add_parser("collect", help="collect Shadow-hand trajectories (Minari layout)")
    p.add_argument("--env", default="trajebm/ShadowHandBlock-v0", help="registered env id")
    p.add_argument("--episodes", type=int, required=True, help="number of trajectories N")
    p.add_argument("--length", type=int, default=100, help="steps per trajectory T")
    p.add_argument("--policy", default="scripted",
                   help="random | ou | scripted | pd, or module:function, a closed-loop "
                        "policy(states (N, D), step) -> actions (N, 20)")
    p.add_argument("--random-every", type=int, default=0, metavar="K",
                   help="replace every K-th action by a uniform random one (0: never)")
    p.add_argument("--action-noise", type=float, default=0.0, metavar="SIGMA",
                   help="add Gaussian noise of this std to every action, then clip to [-1, 1]")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="collect only shard I of N (a contiguous block of episodes); join the "
                        "shards with `trajebm dataset merge`")
    p.add_argument("--velocities", action="store_true",
                   help="include joint and object velocities in the state")
    p.add_argument("--out", required=True, help="dataset folder DIR (DIR/data/...)")
    p.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=32, help="episodes per durable chunk")
    p.add_argument("--dataset-id", default=None, help="minari dataset id (default from DIR)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="finish an interrupted collection")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_collect)

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


def run_collect(args: argparse.Namespace) -> int:
    from trajebm.data.collection import CollectConfig, collect, parse_shard, shard_ids
    from trajebm.data.policies import PolicyConfig

    if args.workers is not None and args.workers <= 0:
        raise UsageError(f"--workers must be positive, got {args.workers}")
    shard = parse_shard(args.shard) if args.shard is not None else None
    if ":" in args.policy and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # module:function may name a module in the cwd
    policy = PolicyConfig(name=args.policy, random_every=args.random_every,
                          action_noise=args.action_noise)
    cfg = CollectConfig(
        env_id=args.env, episodes=args.episodes, length=args.length, policy=policy,
        seed=args.seed, include_velocities=args.velocities, chunk_episodes=args.chunk,
    )
    data_dir = collect(cfg, args.out, workers=args.workers, resume=args.resume,
                       overwrite=args.overwrite, dataset_id=args.dataset_id,
                       progress=not args.quiet, shard=shard)
    n = len(shard_ids(cfg.episodes, *shard)) if shard else cfg.episodes
    print(f"wrote {n} episodes x {cfg.length} steps to {data_dir}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from trajebm.data.collection import merge_shards

    data_dir = merge_shards(args.shards, args.out, dataset_id=args.dataset_id)
    print(f"merged {len(args.shards)} shards into {data_dir}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from trajebm.data.dataset import dataset_info, format_info

    print(format_info(dataset_info(args.path)))
    return 0


def run_render(args: argparse.Namespace) -> int:
    from trajebm.data.render import render_episode

    out = render_episode(args.path, args.episode, args.out, args.width, args.height, args.every)
    print(f"wrote {out}")
    return 0
