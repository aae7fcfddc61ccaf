"""The local stack: a Ray instance, the three Serve apps behind one gRPC port, the gateway.

``start_serve`` is also what the integration tests use, so the tested wiring is the
wiring ``vplab up`` runs. App names, import paths and servicers come from
``vplab.serving.apps`` (the Helm chart is generated from the same place).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from vplab.serving.apps import (
    APPS,
    GRPC_PORT,
    HTTP_PORT,
    deployment_options,
    servicer_functions,
)
from vplab.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``VPLAB_*`` variables, for Ray workers and the gateway process."""
    env = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, (dict, list)):
            env[f"VPLAB_{name.upper()}"] = json.dumps(value)  # pydantic-settings reads JSON
        elif value is not None:
            env[f"VPLAB_{name.upper()}"] = str(value)
    return env


def import_app(import_path: str):
    module, _, attr = import_path.partition(":")
    return getattr(importlib.import_module(module), attr)


def start_serve(
    settings: Settings,
    grpc_port: int = GRPC_PORT,
    http_port: int = HTTP_PORT,
    num_cpus: int | None = None,
) -> None:
    """Start (or join) a local Ray instance and run every Serve app on it."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    if not ray.is_initialized():
        # Logical CPUs: each replica and training task reserves one, physical cores are shared.
        # The settings reach every worker (replicas, training tasks) through the job's
        # runtime_env, leaving this process's environment untouched.
        ray.init(
            num_cpus=num_cpus or max(8, os.cpu_count() or 2),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": settings_env(settings)},
        )
    serve.start(
        http_options=HTTPOptions(host="127.0.0.1", port=http_port),
        grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=servicer_functions()),
    )
    for app in APPS:
        # The deployment's options come from ``settings`` here: decorator arguments would be
        # evaluated with this process's environment, not the stack's settings.
        module = app.import_path.partition(":")[0]
        deployment = import_app(f"{module}:{app.deployment}")
        bound = deployment.options(**deployment_options(settings, app.name)).bind()
        serve.run(bound, name=app.name, route_prefix=app.route_prefix)


def stop_serve() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def ensure_demo_key(settings: Settings, tenant_name: str = "demo") -> tuple[str, str]:
    """(tenant id, a new API key) for the local stack's demo tenant."""
    from vplab.storage import open_store
    from vplab.tenancy import create_key, create_tenant, list_tenants

    store = open_store(settings)
    for tenant in list_tenants(store):
        if tenant.name == tenant_name:
            return tenant.id, create_key(store, tenant.id, settings.api_key_pepper)
    tenant, key = create_tenant(store, tenant_name, settings.api_key_pepper)
    return tenant.id, key


def _state_file(settings: Settings) -> Path:
    return Path(settings.data_dir).parent / "stack.json"


def wait_healthy(url: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except Exception as e:  # noqa: BLE001 - any failure means not up yet
            last = str(e)
        time.sleep(1.0)
    raise TimeoutError(f"{url} not healthy after {timeout_s:.0f}s: {last}")


def start_gateway_process(
    settings: Settings, port: int, grpc_target: str, quiet: bool = False
) -> subprocess.Popen:
    """The REST gateway as its own process (``vplab gateway``), as in production."""
    env = {**os.environ, **settings_env(settings), "VPLAB_GRPC_TARGET": grpc_target}
    out = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(
        [sys.executable, "-m", "vplab.cli", "gateway", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=out,
        stderr=out,
    )


def run_stack(settings: Settings, grpc_port: int, gateway_port: int, http_port: int) -> int:
    """Foreground: start everything, print how to use it, run until interrupted."""
    start_serve(settings, grpc_port, http_port)
    gateway = start_gateway_process(settings, gateway_port, f"127.0.0.1:{grpc_port}")
    stopping = []

    def stop(*_):
        stopping.append(True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        wait_healthy(f"http://127.0.0.1:{gateway_port}/healthz")
        tenant, key = ensure_demo_key(settings)
        info = {
            "pid": os.getpid(),
            "rest": f"http://127.0.0.1:{gateway_port}",
            "grpc": f"127.0.0.1:{grpc_port}",
            "tenant": tenant,
        }
        state = _state_file(settings)
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(info))
        print(f"VP Lab is up (demo models: {settings.demo}).", flush=True)
        print(f"  REST gateway : {info['rest']}   (OpenAPI: {info['rest']}/docs)", flush=True)
        print(
            f"  gRPC (Serve) : {info['grpc']}   (metadata: application=features|segmentation|training)",
            flush=True,
        )
        print(f"  tenant       : {tenant}", flush=True)
        print(f"  API key      : {key}", flush=True)
        print("Stop with Ctrl-C or `vplab down`.", flush=True)
        while not stopping and gateway.poll() is None:
            time.sleep(0.5)
    finally:
        gateway.terminate()
        try:
            gateway.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gateway.kill()
        stop_serve()
        _state_file(settings).unlink(missing_ok=True)
    return 0


def stop_stack(settings: Settings, timeout_s: float = 60.0) -> bool:
    """Stop a stack started by ``vplab up`` (foreground or --detach). False if none runs."""
    state = _state_file(settings)
    if not state.exists():
        return False
    pid = json.loads(state.read_text())["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        state.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    return True
