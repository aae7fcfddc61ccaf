"""``vplab peft list|describe`` and ``vplab export``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vplab.errors import InvalidInput


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("peft", help="PEFT methods: list them, describe their trainable pieces")
    psub = p.add_subparsers(dest="peft_command", required=True, metavar="SUBCOMMAND")
    q = psub.add_parser("list", help="list the registered methods")
    q.set_defaults(func=run_list)
    q = psub.add_parser("describe", help="build the architecture and count trainable parameters")
    q.add_argument("--method", required=True)
    q.add_argument(
        "--base", default="sam_vit_b", help="sam_vit_b | sam_vit_l | sam_vit_h | sam_tiny"
    )
    q.add_argument("--config", default="{}", help="method config overrides as JSON")
    q.set_defaults(func=run_describe)

    p = sub.add_parser("export", help="export a tuned adapter")
    p.add_argument("--adapter", required=True, help="adapter directory")
    p.add_argument(
        "--merge",
        action="store_true",
        help="fold the adapter into a plain SAM checkpoint (weight-delta methods only)",
    )
    p.add_argument("--out", required=True, help="output .pth (with --merge) or directory (copy)")
    p.add_argument(
        "--sam", metavar="CHECKPOINT", help="the base checkpoint (not needed for sam_tiny)"
    )
    p.add_argument("--sam-sha256")
    p.set_defaults(func=run_export)


def run_list(args: argparse.Namespace) -> int:
    from vplab.peft import get_method, method_names

    for name in method_names():
        spec = get_method(name)
        flags = [spec.encoder_mode + "-encoder"]
        if spec.prompt_free:
            flags.append("prompt-free")
        if spec.mergeable:
            flags.append("mergeable")
        print(f"{name:16s} {', '.join(flags):40s} {spec.description}")
    return 0


def run_describe(args: argparse.Namespace) -> int:
    import json

    from vplab.peft.describe import describe_lines

    try:
        overrides = json.loads(args.config)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"--config is not valid JSON: {e}") from None
    for line in describe_lines(args.method, args.base, overrides):
        print(line)
    return 0


def run_export(args: argparse.Namespace) -> int:
    import shutil

    if not args.merge:
        out = Path(args.out)
        if out.exists():
            raise InvalidInput(f"{out} already exists")
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.copytree(args.adapter, tmp)
        tmp.rename(out)
        print(f"copied adapter to {out}")
        return 0
    import torch

    from vplab.cli.local import _load_tuned
    from vplab.peft.merge import merged_state_dict

    args.sam_model = None
    sam, cfg = _load_tuned(args)
    state = merged_state_dict(sam, cfg["method"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(out)
    print(
        f"wrote merged {cfg['base']['name']} checkpoint to {out} "
        f"(loads with segment_anything.sam_model_registry[...](checkpoint=...))"
    )
    return 0
