"""``vplab demo-data``: the synthetic demo dataset."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write a small synthetic dataset (images/ and masks/)")
    p.add_argument("dir", help="output directory")
    p.add_argument("--n", type=int, default=8, help="number of images (default 8)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_demo_data)


def run_demo_data(args: argparse.Namespace) -> int:
    from vplab.demo import write_demo_dataset
    from vplab.errors import InvalidInput

    if args.n <= 0 or args.size < 32:
        raise InvalidInput("--n must be > 0 and --size >= 32")
    names = write_demo_dataset(args.dir, n=args.n, size=args.size, seed=args.seed)
    print(f"wrote {len(names)} images to {args.dir}/images and masks to {args.dir}/masks")
    return 0
