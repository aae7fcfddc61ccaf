"""Model options shared by the local commands: ``--sam/--dino CHECKPOINT`` or ``--demo``."""

from __future__ import annotations

import argparse

from vplab.errors import InvalidInput

# The embedded defaults (docs/MINIWORLD.md): small, pretrained by us, digest-pinned.
DEMO_SAM = "sam_mini"
DEMO_DINO = "dinov2_mini"


def add_model_args(p: argparse.ArgumentParser, dino: bool = False) -> None:
    g = p.add_argument_group("models")
    g.add_argument(
        "--demo",
        action="store_true",
        help="use the embedded sam_mini / dinov2_mini (pretrained on miniworld; no checkpoint)",
    )
    g.add_argument(
        "--sam", metavar="CHECKPOINT", help="official SAM checkpoint (path or object-store key)"
    )
    g.add_argument("--sam-model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    g.add_argument("--sam-sha256", help="expected sha256 of the SAM checkpoint")
    if dino:
        g.add_argument(
            "--dino", metavar="CHECKPOINT", help="DINOv2 checkpoint (Meta or timm format)"
        )
        g.add_argument("--dino-model", default="vit_small_patch14_dinov2")
        g.add_argument("--dino-sha256")


def base_sam(args: argparse.Namespace):
    """The ``BaseSam`` the options name (demo: the embedded sam_mini)."""
    from vplab.models.base import resolve_base_sam

    if args.demo:
        return resolve_base_sam(DEMO_SAM)
    if not args.sam:
        raise InvalidInput("give --sam CHECKPOINT (an official SAM checkpoint) or --demo")
    return resolve_base_sam(args.sam_model, args.sam, args.sam_sha256)


def dino_model(args: argparse.Namespace):
    from vplab.models import build_dinov2

    if args.demo:
        return build_dinov2(DEMO_DINO)
    if not args.dino:
        raise InvalidInput("give --dino CHECKPOINT (a DINOv2 checkpoint) or --demo")
    return build_dinov2(args.dino_model, args.dino, sha256=args.dino_sha256)
