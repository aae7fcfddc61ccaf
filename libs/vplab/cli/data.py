"""``vplab demo-data``: the demo dataset (miniworld images of one target domain);
``vplab import``: an archive of images and labels into a dataset of the store."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-data", help="write a small demo dataset of miniworld images (images/ and masks/)"
    )
    p.add_argument("dir", help="output directory")
    p.add_argument("--n", type=int, default=8, help="number of images (default 8)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--domain",
        default=None,
        help="miniworld domain whose target class is the mask (default: polyps; "
        "'cells' = the pre-miniworld synthetic task)",
    )
    p.set_defaults(func=run_demo_data)

    p = sub.add_parser(
        "import",
        help="import a zip or tar of images with masks/ PNGs or a COCO JSON into a dataset "
        "(the store of the VPLAB_* settings)",
    )
    p.add_argument("archive", help="a .zip or .tar(.gz) file")
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("--dataset", required=True, help="dataset id")
    p.set_defaults(func=run_import)


def run_demo_data(args: argparse.Namespace) -> int:
    from vplab.demo import DEMO_DOMAIN, LEGACY_DOMAIN, write_demo_dataset
    from vplab.errors import InvalidInput
    from vplab.miniworld import DOMAINS, SOURCE_DOMAIN

    domain = args.domain or DEMO_DOMAIN
    allowed = [d for d in DOMAINS if d != SOURCE_DOMAIN] + [LEGACY_DOMAIN]
    if domain not in allowed:
        raise InvalidInput(f"--domain must be one of {allowed}, got {domain!r}")
    if args.n <= 0 or args.size < 32 or args.seed < 0:
        raise InvalidInput("--n must be > 0, --size >= 32 and --seed >= 0")
    names = write_demo_dataset(args.dir, n=args.n, size=args.size, seed=args.seed, domain=domain)
    print(f"wrote {len(names)} {domain} images to {args.dir}/images and masks to {args.dir}/masks")
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Prints the report (JSON); exit status 1 when some files could not be imported."""
    import json

    from vplab.dataio.importing import import_archive
    from vplab.datasets import DatasetStore
    from vplab.settings import get_settings
    from vplab.storage import open_store

    settings = get_settings()
    datasets = DatasetStore(open_store(settings), settings)
    report = import_archive(datasets, args.tenant, args.dataset, args.archive)
    print(json.dumps(report.plain(), indent=1))
    return 1 if report.errors else 0
