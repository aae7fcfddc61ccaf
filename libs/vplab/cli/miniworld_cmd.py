"""``vplab miniworld render|pretrain|sheets``: the procedural world and the mini models."""

from __future__ import annotations

import argparse
import sys


def add_commands(sub: argparse._SubParsersAction) -> None:
    from vplab.miniworld import DOMAINS

    p = sub.add_parser("miniworld", help="the procedural miniworld and its mini models")
    msub = p.add_subparsers(dest="miniworld_command", required=True, metavar="COMMAND")

    r = msub.add_parser("render", help="write N images of a domain with class/instance masks")
    r.add_argument("domain", choices=DOMAINS)
    r.add_argument("dir", help="output directory (images/, masks/CLASS/, masks/labels/, ...)")
    r.add_argument("--n", type=int, default=8)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--start", type=int, default=0, help="first image index")
    r.set_defaults(func=run_render)

    t = msub.add_parser(
        "pretrain", help="reproduce sam_mini or dinov2_mini from a seed (fp16 safetensors)"
    )
    t.add_argument("model", choices=["sam", "dino"])
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, help="override the recipe's step count (not reproducing)")
    t.add_argument("--threads", type=int, help="torch threads (recipe: 2; changes rounding)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="sam: continue after the last finished cycle whose checkpoint is in --out",
    )
    t.set_defaults(func=run_pretrain)

    e = msub.add_parser(
        "eval-clicks",
        help="interactive-click mIoU of sam_mini (1..3 clicks) on held-out images; one JSON line",
    )
    e.add_argument("--domain", default="source", choices=DOMAINS)
    e.add_argument("--n-images", type=int, default=50)
    e.add_argument("--weights", help="a sam_mini safetensors file (default: the embedded one)")
    e.add_argument("--random-init", action="store_true", help="the random-init control")
    e.add_argument(
        "--breakdown",
        action="store_true",
        help="also the best of the first click's 3 masks, a tight box, and by object area",
    )
    e.set_defaults(func=run_eval_clicks)

    s = msub.add_parser(
        "sheets",
        help="write the docs' PNGs: a contact sheet per domain, the demo click before/after",
    )
    s.add_argument("dir")
    s.add_argument("--n", type=int, default=4)
    s.set_defaults(func=run_sheets)


def run_render(args: argparse.Namespace) -> int:
    from vplab.errors import InvalidInput
    from vplab.miniworld.write import write_domain

    if args.n <= 0 or args.seed < 0 or args.start < 0:
        raise InvalidInput("--n must be > 0, --seed and --start >= 0")
    names = write_domain(args.domain, args.dir, args.n, args.seed, args.start)
    print(
        f"wrote {len(names)} {args.domain} images to {args.dir}/images, masks to {args.dir}/masks"
    )
    return 0


def run_pretrain(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    overrides = {k: getattr(args, k) for k in ("steps", "threads") if getattr(args, k)}
    if args.model == "sam":
        from vplab.miniworld.pretrain_sam import SamPretrainConfig, pretrain_sam

        config = SamPretrainConfig(seed=args.seed, **overrides)
        report = pretrain_sam(args.out, config, log, resume=args.resume)
    else:
        from vplab.miniworld.pretrain_dino import DinoPretrainConfig, pretrain_dino

        report = pretrain_dino(args.out, DinoPretrainConfig(seed=args.seed, **overrides), log)
    print(f"{report['path']}  sha256 {report['sha256']}  trained in {report['train_s']:.0f} s")
    return 0


def run_eval_clicks(args: argparse.Namespace) -> int:
    """The #11 click figures: held-out source images (seed 1), or a target domain's class
    mask (instances for nuclei and instruments), as ``evaluate_clicks`` defines them."""
    import json

    from vplab.errors import InvalidInput
    from vplab.miniworld.evaluate import SOURCE_TEST_SEED, evaluate_clicks
    from vplab.models import build_sam

    if args.n_images < 1:
        raise InvalidInput("--n-images must be >= 1")
    sam = build_sam("sam_mini", args.weights, random_init=args.random_init)
    source = args.domain == "source"
    result = evaluate_clicks(
        sam,
        domain=args.domain,
        seed=SOURCE_TEST_SEED if source else 0,
        n_images=args.n_images,
        per_class=args.domain not in ("source", "nuclei", "instruments"),
        breakdown=args.breakdown,
    )
    print(json.dumps({"domain": args.domain, "n_images": args.n_images, **result}))
    return 0


def run_sheets(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vplab.images import encode_png
    from vplab.miniworld import DOMAINS
    from vplab.miniworld.write import contact_sheet

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    for d in DOMAINS:
        (out / f"miniworld-{d}.png").write_bytes(encode_png(contact_sheet(d, args.n)))
    print(f"wrote {len(DOMAINS)} contact sheets to {out}")
    from vplab.demo import DEMO_DOMAIN
    from vplab.miniworld.write import click_figure

    fig, ious = click_figure(DEMO_DOMAIN)
    (out / "demo-click.png").write_bytes(encode_png(fig))
    shown = ", ".join(f"{k} IoU {v:.2f}" for k, v in ious.items())
    print(f"wrote {out}/demo-click.png (ground truth | {' | '.join(ious)}: {shown})")
    return 0
