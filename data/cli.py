"""`trajebm collect` and `trajebm dataset info|render`: thin wrappers over trajebm.data."""

from __future__ import annotations

import argparse

from trajebm.engine.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``collect`` and ``dataset`` subcommands."""
    p = subparsers.add_parser("collect", help="collect Shadow-hand trajectories (Minari layout)")
    p.add_argument("--env", default="trajebm/ShadowHandBlock-v0", help="registered env id")
    p.add_argument("--episodes", type=int, required=True, help="number of trajectories N")
    p.add_argument("--length", type=int, default=100, help="steps per trajectory T")
    p.add_argument("--policy", default="scripted", help="random | ou | scripted")
    p.add_argument("--random-every", type=int, default=0, metavar="K",
                   help="replace every K-th action by a uniform random one (0: never)")
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


def run_collect(args: argparse.Namespace) -> int:
    from trajebm.data.collection import CollectConfig, collect
    from trajebm.data.policies import PolicyConfig

    if args.workers is not None and args.workers <= 0:
        raise UsageError(f"--workers must be positive, got {args.workers}")
    cfg = CollectConfig(
        env_id=args.env, episodes=args.episodes, length=args.length,
        policy=PolicyConfig(name=args.policy, random_every=args.random_every),
        seed=args.seed, include_velocities=args.velocities, chunk_episodes=args.chunk,
    )
    data_dir = collect(cfg, args.out, workers=args.workers, resume=args.resume,
                       overwrite=args.overwrite, dataset_id=args.dataset_id,
                       progress=not args.quiet)
    print(f"wrote {cfg.episodes} episodes x {cfg.length} steps to {data_dir}")
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
