"""A local stack for the benchmarks: Ray + the three Serve apps (``vplab.stack.start_serve``)
and the REST gateway in its own process (``vplab gateway``) - the wiring ``vplab up`` runs -
on free ports, with a throwaway local store. The library never imports ``services``."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

from vplab.bench._common import log
from vplab.procs import free_port
from vplab.settings import Settings

PEPPER = "vplab-bench-pepper"


def bench_settings(work_dir: Path, sam_model: str, **overrides) -> Settings:
    """Local store under ``work_dir``, the real ``sam_model`` architecture with seeded random
    weights (``random_weights``; no checkpoint), nothing else from a configured deployment."""
    base = dict(
        data_dir=(work_dir / "data").resolve(),
        s3_endpoint=None,
        sam_model=sam_model,
        random_weights=True,
        demo=False,
        device="cpu",
        api_key_pepper=PEPPER,
    )
    return Settings(**{**base, **overrides})


@contextlib.contextmanager
def local_stack(
    settings: Settings, gateway: bool = True, num_cpus: int = 8
) -> Iterator[SimpleNamespace]:
    """Start Ray + Serve (+ the gateway); yield ``settings``, ``grpc_target`` and ``url``.
    Replicas use ``settings.torch_threads`` (0: every core, as in-process torch does)."""
    from vplab.stack import start_gateway_process, start_serve, stop_serve, wait_healthy

    grpc_port, http_port = free_port(), free_port()
    settings = settings.model_copy(update={"grpc_target": f"127.0.0.1:{grpc_port}"})
    server = None
    try:
        t0 = time.perf_counter()
        start_serve(settings, grpc_port=grpc_port, http_port=http_port, num_cpus=num_cpus)
        log(f"Ray + Serve apps up in {time.perf_counter() - t0:.1f}s (gRPC {settings.grpc_target})")
        url = None
        if gateway:
            port = free_port()
            server = start_gateway_process(settings, port, settings.grpc_target, quiet=True)
            url = f"http://127.0.0.1:{port}"
            wait_healthy(f"{url}/healthz")
        yield SimpleNamespace(settings=settings, grpc_target=settings.grpc_target, url=url)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        stop_serve()


def _ancestors(pid: int) -> set[int]:
    out = set()
    while pid > 1:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        out.add(pid)
    return out


def own_processes(name_part: str) -> list[int]:
    """Pids of this process's descendants whose command line contains ``name_part`` (e.g.
    a Serve replica's ``SegmentationDeployment``); other Ray instances are left out."""
    me, out = os.getpid(), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if name_part in cmd and me in _ancestors(int(proc.name)):
            out.append(int(proc.name))
    return out
