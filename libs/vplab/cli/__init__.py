"""The ``vplab`` command: local tools (segment, visual-prompt, train, predict, export),
the local stack (up/down), tenants and benchmarks. Each group lives in its own module."""

from __future__ import annotations

import argparse
import sys

from vplab.errors import VPLabError


def build_parser() -> argparse.ArgumentParser:
    from vplab.cli import (
        bench,
        data,
        gateway_cmd,
        local,
        miniworld_cmd,
        peft_cmds,
        stack,
        tenants,
    )

    parser = argparse.ArgumentParser(
        prog="vplab",
        description="VP Lab: few-shot segmentation with SAM, visual prompting and PEFT.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (data, local, peft_cmds, stack, tenants, gateway_cmd, bench, miniworld_cmd):
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vplab.procs import adopt_parent_death

    adopt_parent_death()  # a child of `vplab up` (the gateway) dies with it
    args = build_parser().parse_args(argv)
    try:
        from vplab.allocator import keep_freed_memory
        from vplab.settings import get_settings

        keep_freed_memory(
            get_settings().malloc_trim_mb
        )  # local train/predict/bench do model work here
        return int(args.func(args) or 0)
    except VPLabError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
