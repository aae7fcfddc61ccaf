"""``vplab up`` / ``vplab down``: the local stack on the embedded defaults."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from vplab.serving.apps import GATEWAY_PORT, GRPC_PORT, HTTP_PORT


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start the local stack: Ray + Serve apps (gRPC) + REST gateway")
    p.add_argument(
        "--demo",
        action="store_true",
        help="embedded sam_mini / dinov2_mini (no checkpoints needed)",
    )
    p.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    p.add_argument("--port", type=int, default=GATEWAY_PORT, help="REST gateway port")
    p.add_argument(
        "--http-port", type=int, default=HTTP_PORT, help="Serve HTTP proxy port (health only)"
    )
    p.add_argument(
        "--detach", action="store_true", help="run in the background (stop with `vplab down`)"
    )
    p.set_defaults(func=run_up)
    p = sub.add_parser("down", help="stop the local stack")
    p.set_defaults(func=run_down)


def _settings(args: argparse.Namespace):
    from vplab.settings import Settings

    return Settings(demo=True) if getattr(args, "demo", False) else Settings()


def run_up(args: argparse.Namespace) -> int:
    from vplab.stack import check_not_running, check_ports, run_stack, stack_ports, wait_healthy

    settings = _settings(args)
    check_not_running(settings)
    check_ports(stack_ports(args.grpc_port, args.port, args.http_port))  # before anything starts
    if not args.detach:
        rc = run_stack(settings, args.grpc_port, args.port, args.http_port)
        # Everything is stopped; skip the interpreter's teardown of Ray's core worker and
        # torch, which took another 2-5 s on 2 cores.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    log = Path(settings.data_dir).parent / "stack.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "vplab.cli",
        "up",
        "--grpc-port",
        str(args.grpc_port),
        "--port",
        str(args.port),
        "--http-port",
        str(args.http_port),
    ] + (["--demo"] if args.demo else [])
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ
        )
    try:
        wait_healthy(f"http://127.0.0.1:{args.port}/healthz", timeout_s=300, process=proc)
    except (TimeoutError, RuntimeError) as e:
        if proc.poll() is None:
            proc.terminate()  # it is our stack: do not leave it starting in the background
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
        print(f"error: the stack did not come up ({e}); see {log}:\n{tail}", file=sys.stderr)
        return 1
    for _ in range(60):  # the key is printed right after the health check passes
        lines = log.read_text().splitlines()
        if any("API key" in line for line in lines[-10:]):
            break
        time.sleep(0.5)
    print(
        "\n".join(
            line
            for line in log.read_text().splitlines()[-8:]
            if line.startswith(("VP Lab", "  ", "Stop"))
        )
    )
    print(f"(pid {proc.pid}, log {log})")
    return 0


def run_down(args: argparse.Namespace) -> int:
    from vplab.stack import stop_stack

    print("stopped" if stop_stack(_settings(args)) else "no local stack is running")
    return 0
