"""``vplab gateway``: run the REST gateway (FastAPI under uvicorn) in this process."""

from __future__ import annotations

import argparse

# Longer than any client's or proxy's idle expiry. uvicorn's 5 s equals httpx's pool expiry,
# so a client could send on a connection the server was closing that moment (a ReadError
# at 128 load-bench clients, whose connections sat idle while the level's slowest requests
# finished); an ingress in front (nginx: 60 s upstream keep-alive) must also close first.
KEEP_ALIVE_S = 75.0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from vplab.serving.apps import GATEWAY_PORT

    p = sub.add_parser(
        "gateway",
        help="run the REST gateway (settings from VPLAB_* variables; gRPC target: VPLAB_GRPC_TARGET)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address (default 127.0.0.1; 0.0.0.0 in containers)",
    )
    p.add_argument("--port", type=int, default=GATEWAY_PORT, help=f"port (default {GATEWAY_PORT})")
    p.add_argument(
        "--grpc-target", help="host:port of the Serve gRPC proxy (overrides VPLAB_GRPC_TARGET)"
    )
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=None,
        help="seconds open requests and streams get on SIGTERM (default: until they end)",
    )
    p.add_argument(
        "--timeout-keep-alive",
        type=float,
        default=KEEP_ALIVE_S,
        help=f"seconds an idle keep-alive connection stays open (default {KEEP_ALIVE_S:g})",
    )
    p.set_defaults(func=run_gateway)


def run_gateway(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from vplab.errors import InvalidInput
    from vplab.serving.apps import GATEWAY_FACTORY

    if not 0 < args.port < 65536:
        raise InvalidInput(f"--port must be 1..65535, got {args.port}")
    if args.workers < 1:
        raise InvalidInput("--workers must be >= 1")
    if not args.timeout_keep_alive > 0:
        raise InvalidInput("--timeout-keep-alive must be > 0")
    if args.grpc_target:
        os.environ["VPLAB_GRPC_TARGET"] = args.grpc_target  # read by Settings() in each worker
    uvicorn.run(
        GATEWAY_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        proxy_headers=True,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        timeout_keep_alive=args.timeout_keep_alive,
    )
    return 0
