"""``imagebm download``: fetch a public dataset, checksum-verified."""

from __future__ import annotations

import argparse

from imagebm.cli.common import add_quiet
from imagebm.datasets import DATASETS, ROOT_ENV, dataset_spec
from imagebm.download import MIRROR_ENV, download


def run_download(args: argparse.Namespace) -> int:
    spec = dataset_spec(args.name)
    if not spec.needs_download:
        print(f"{args.name} needs no download ({spec.source})")
        return 0
    folder = download(args.name, args.root, base_url=args.base_url, progress=not args.quiet)
    print(f"{args.name} is ready in {folder}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``imagebm download``."""
    p = subparsers.add_parser("download", help="fetch a public dataset, checksum-verified")
    p.add_argument("name", choices=list(DATASETS), help="dataset")
    p.add_argument("--root", default=None,
                   help=f"data root (default: ${ROOT_ENV}, else ~/.cache/imagebm)")
    p.add_argument("--base-url", default=None,
                   help=f"mirror serving BASE_URL/FILENAME (default: ${MIRROR_ENV}, else the "
                        f"publishers' hosts)")
    add_quiet(p)
    p.set_defaults(func=run_download)
