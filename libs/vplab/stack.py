"""The local stack: a Ray instance, the three Serve apps behind one gRPC port, the gateway.

``start_serve`` is also what the integration tests use, so the tested wiring is the
wiring ``vplab up`` runs. App names, import paths and servicers come from
``vplab.serving.apps`` (the Helm chart is generated from the same place).

Process hygiene (``run_stack``): every process the stack starts dies with it. The gateway
and Ray's own processes (GCS, raylet, monitors: Ray sets it) get a parent-death signal;
every process started carries ``VPLAB_STACK_ID``, and a reaper kills them all once the
stack process is gone, SIGKILL included (``procs.start_reaper``). On SIGTERM / SIGINT /
SIGHUP the stack stops in about 2 s: the gateway, ``ray.shutdown`` (no Serve graceful
shutdown, see ``SERVE_GRACE_S``), then any child left, which includes orphaned workers
(the stack process is their subreaper). The ports are checked before anything starts.
See docs/DESIGN-NOTES.md, "Local stack process hygiene".
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
import uuid
from pathlib import Path

from vplab import procs
from vplab.errors import VPLabError
from vplab.serving.apps import (
    APPS,
    GRPC_PORT,
    HTTP_PORT,
    deployment_options,
    servicer_functions,
)
from vplab.settings import Settings

GATEWAY_GRACE_S = 3.0  # uvicorn's graceful shutdown (open requests, SSE streams)
# Serve's controller graceful shutdown cannot finish in a few seconds: its proxies drain for
# at least RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S (30 s), replicas get 20 s. The local stack
# skips it: the gateway has drained REST traffic by then, the replicas hold no state, and a
# training job resumes from its checkpoint on the next start. ray.shutdown stops them all.
SERVE_GRACE_S = 0.0
CHILD_GRACE_S = 1.0  # SIGTERM -> SIGKILL for anything still running after ray.shutdown


class PortInUse(VPLabError):
    """A port the stack needs is taken; the message names the holder."""


class StackRunning(VPLabError):
    """``vplab up`` on a data dir whose stack is already running."""


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


def start_ray(settings: Settings, num_cpus: int | None = None) -> None:
    """Start a local Ray instance for the stack, or join ``settings.ray_address``'s cluster
    (nothing if this process already has one)."""
    import ray

    if ray.is_initialized():
        return
    if settings.ray_address:
        # A cluster started with `ray start` (or KubeRay): its nodes bring their own CPUs and
        # role resources; the settings still reach every worker through the runtime_env.
        # The stack's driver runs where the head runs (as `serve deploy` does in KubeRay), so it
        # attaches to the head's raylet: its address is the host of ``ray_address``.
        ray.init(
            address=settings.ray_address,
            _node_ip_address=settings.ray_address.rpartition(":")[0] or None,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": settings_env(settings)},
        )
    else:
        # A local instance talks over loopback only. On Linux Ray otherwise picks the
        # address of the default route's interface for GCS, raylet and workers. Ray's switch
        # for its loopback-only mode is read once, when ray_constants is imported: set the
        # variable for the Ray processes started below, and the constant in this one.
        from ray._private import ray_constants

        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
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


def start_serve(
    settings: Settings,
    grpc_port: int = GRPC_PORT,
    http_port: int = HTTP_PORT,
    num_cpus: int | None = None,
    proxy_location: str | None = None,
) -> None:
    """Start (or join) a Ray instance and run every Serve app on it. ``proxy_location``:
    Serve's (None: Serve's default; "HeadOnly" when several nodes share one host and so
    its ports)."""
    from ray import serve
    from ray.serve.config import HTTPOptions, ProxyLocation, gRPCOptions

    start_ray(settings, num_cpus)
    serve.start(
        proxy_location=None if proxy_location is None else ProxyLocation(proxy_location),
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


def stop_serve(serve_timeout_s: float | None = None) -> None:
    """Stop Serve and the local Ray instance.

    ``serve_timeout_s`` bounds Serve's graceful shutdown (None: Serve's own, which waits up
    to 30 s for the controller and its proxies' draining period; 0: none); ``ray.shutdown``
    then stops whatever is left.
    """
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        if serve_timeout_s is None:
            serve.shutdown()
        elif serve_timeout_s > 0:
            from ray.serve.context import _get_global_client

            client = _get_global_client(raise_if_no_controller_running=False)
            if client is not None:
                client.shutdown(timeout_s=serve_timeout_s)
    except Exception as e:  # noqa: BLE001 - Ray is stopped below whatever Serve did
        print(f"serve shutdown: {e}", file=sys.stderr)
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


DEMO_DATASET = "miniworld polyps (demo)"


def ensure_demo_dataset(settings: Settings, tenant: str, n: int = 12) -> str:
    """The demo tenant's dataset of miniworld images (created once), so that a new user has
    something to prompt on in the web app at once; returns its id."""
    from vplab.datasets import DatasetStore
    from vplab.demo import DEMO_DOMAIN, miniworld_sample
    from vplab.images import encode_png
    from vplab.storage import open_store

    datasets = DatasetStore(open_store(settings), settings)
    for d in datasets.list_datasets(tenant):
        if d.name == DEMO_DATASET:
            return d.id
    d = datasets.create_dataset(tenant, DEMO_DATASET, classes=[{"name": "polyp"}])
    for i in range(n):
        image, _ = miniworld_sample(DEMO_DOMAIN, 0, i)
        datasets.add_image(tenant, d.id, encode_png(image), f"polyp_{i:03d}.png")
    return d.id


def _state_file(settings: Settings) -> Path:
    return Path(settings.data_dir).parent / "stack.json"


def _write_state(settings: Settings, info: dict) -> None:
    state = _state_file(settings)
    state.parent.mkdir(parents=True, exist_ok=True)
    tmp = state.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(state)


def _is_stack_process(pid: int, started: int | None) -> bool:
    """Whether ``pid`` is still the ``vplab up`` a state file names (not a reused pid)."""
    if not procs.alive(pid):
        return False
    if started is not None and procs.start_time(pid) not in (None, started):
        return False
    command = procs.cmdline(pid)
    return not command or ("vplab" in command and " up" in command)


def running_stack(settings: Settings) -> int | None:
    """The pid of the live ``vplab up`` this data dir's state file names, if any."""
    try:
        info = json.loads(_state_file(settings).read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if _is_stack_process(pid, info.get("start_time")) else None


def check_not_running(settings: Settings) -> None:
    pid = running_stack(settings)
    if pid is not None and pid != os.getpid():
        raise StackRunning(
            f"a local stack is already running on this data dir (pid {pid}, "
            f"{_state_file(settings)}); stop it with `vplab down`"
        )


def check_ports(ports: dict[int, tuple[str, str]]) -> None:
    """Raise ``PortInUse`` naming every taken port and its holder.

    ``ports``: port -> (what uses it, the address it binds).
    """
    taken = [
        f"port {port} ({what}) is {procs.describe_holders(procs.port_holders(port))}"
        for port, (what, host) in ports.items()
        if not procs.port_free(port, host)
    ]
    if taken:
        raise PortInUse("; ".join(taken) + ". Stop it or choose other ports (see --help).")


def stack_ports(grpc_port: int, gateway_port: int, http_port: int) -> dict[int, tuple[str, str]]:
    """The stack's ports: the gateway and Serve's HTTP proxy bind loopback, the gRPC proxy
    every interface (Serve has no bind address for it)."""
    return {
        gateway_port: ("REST gateway, --port", "127.0.0.1"),
        grpc_port: ("Serve gRPC proxy, --grpc-port", "0.0.0.0"),
        http_port: ("Serve HTTP proxy, --http-port", "127.0.0.1"),
    }


def wait_healthy(
    url: str, timeout_s: float = 180.0, process: subprocess.Popen | None = None
) -> None:
    """Poll ``url`` until it answers 200; give up early if ``process`` (the server) exits."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited (status {process.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except Exception as e:  # noqa: BLE001 - any failure means not up yet
            last = str(e)
        time.sleep(1.0)
    raise TimeoutError(f"{url} not healthy after {timeout_s:.0f}s: {last}")


def start_gateway_process(
    settings: Settings,
    port: int,
    grpc_target: str,
    quiet: bool = False,
    graceful_s: float | None = None,
) -> subprocess.Popen:
    """The REST gateway as its own process (``vplab gateway``), as in production.

    It dies with this process, however this one dies (a parent-death signal, set by the
    child itself: ``procs.adopt_parent_death``). Call this from the main thread: Linux
    signals the child when the thread that started it exits.
    """
    env = {
        **os.environ,
        **settings_env(settings),
        "VPLAB_GRPC_TARGET": grpc_target,
        procs.PARENT_ENV: str(os.getpid()),
    }
    out = subprocess.DEVNULL if quiet else None
    argv = [sys.executable, "-m", "vplab.cli", "gateway", "--host", "127.0.0.1"]
    argv += ["--port", str(port)]
    if graceful_s is not None:
        argv += ["--timeout-graceful-shutdown", str(graceful_s)]
    return subprocess.Popen(argv, env=env, stdout=out, stderr=out)


class _Stop(BaseException):  # like KeyboardInterrupt: no `except Exception` swallows it
    """Raised by the first SIGTERM / SIGINT / SIGHUP, wherever the stack process is."""


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run_stack(settings: Settings, grpc_port: int, gateway_port: int, http_port: int) -> int:
    """Foreground: start everything, print how to use it, run until interrupted.

    Raises ``PortInUse`` (before starting anything) if a port is taken. The state file
    (``stack.json`` next to the data dir) is written first, so ``vplab down`` stops this
    stack from the moment it starts.
    """
    check_not_running(settings)
    check_ports(stack_ports(grpc_port, gateway_port, http_port))
    procs.become_subreaper()
    me = os.getpid()
    stack_id = os.environ[procs.STACK_ENV] = uuid.uuid4().hex  # before Ray starts
    reaper = procs.start_reaper(procs.STACK_ENV, stack_id)  # the safety net for a SIGKILL
    info: dict = {
        "pid": me,
        "start_time": procs.start_time(me),
        "stack_id": stack_id,
        "status": "starting",
        "rest": f"http://127.0.0.1:{gateway_port}",
        "grpc": f"127.0.0.1:{grpc_port}",
    }
    _write_state(settings, info)

    def stop(signum, _frame):
        raise _Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in _STOP_SIGNALS}
    gateway: subprocess.Popen | None = None
    rc = 0
    try:
        start_ray(settings)
        # Ray's core installs its own SIGTERM handler (it prints a stack trace and aborts,
        # skipping our shutdown): ours again.
        for sig in _STOP_SIGNALS:
            signal.signal(sig, stop)
        start_serve(settings, grpc_port, http_port)
        gateway = start_gateway_process(
            settings, gateway_port, f"127.0.0.1:{grpc_port}", graceful_s=GATEWAY_GRACE_S
        )
        wait_healthy(f"http://127.0.0.1:{gateway_port}/healthz", process=gateway)
        tenant, key = ensure_demo_key(settings)
        if settings.demo:
            ensure_demo_dataset(settings, tenant)
        info.update(status="up", tenant=tenant)
        _write_state(settings, info)
        print(f"VP Lab is up (demo models: {settings.demo}).", flush=True)
        print(f"  Web app      : {info['rest']}/   (open it, paste the API key below)", flush=True)
        print(f"  REST gateway : {info['rest']}   (OpenAPI: {info['rest']}/docs)", flush=True)
        print(
            f"  gRPC (Serve) : {info['grpc']}   (metadata: application=features|segmentation|training)",
            flush=True,
        )
        print(f"  tenant       : {tenant}", flush=True)
        print(f"  API key      : {key}", flush=True)
        print("Stop with Ctrl-C or `vplab down`.", flush=True)
        while gateway.poll() is None:
            time.sleep(0.5)
        print(f"error: the gateway exited (status {gateway.returncode})", file=sys.stderr)
        rc = 1
    except _Stop as e:
        print(f"{e}: stopping VP Lab...", file=sys.stderr, flush=True)
    finally:
        for sig in _STOP_SIGNALS:  # a second signal skips the grace periods
            signal.signal(sig, _stop_now)
        started = time.monotonic()
        shutdown_stack(gateway, keep=(reaper,))
        state = _state_file(settings)
        if state.exists() and json.loads(state.read_text() or "{}").get("pid") == me:
            state.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"VP Lab stopped in {time.monotonic() - started:.1f}s.", file=sys.stderr, flush=True)
    return rc


def shutdown_stack(gateway: subprocess.Popen | None, keep: tuple[int, ...] = ()) -> None:
    """Stop the gateway, Serve and Ray, then every child still left but ``keep``, each step
    bounded."""
    if gateway is not None and gateway.poll() is None:
        gateway.terminate()
        try:
            gateway.wait(timeout=GATEWAY_GRACE_S + 2)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
    try:
        stop_serve(serve_timeout_s=SERVE_GRACE_S)
    finally:
        procs.kill_children(grace_s=CHILD_GRACE_S, keep=keep)


def _stop_now(signum, _frame) -> None:
    """A second signal while stopping: exit now. The children with a parent-death signal go
    with us, the reaper (woken by our exit) kills the rest."""
    os._exit(128 + signum)


def stop_stack(settings: Settings, timeout_s: float = 30.0) -> bool:
    """Stop a stack started by ``vplab up`` (foreground or --detach). False if none runs.

    A state file whose pid is gone, or is now another program, is stale: it is removed and
    nothing is signalled.
    """
    state = _state_file(settings)
    pid = running_stack(settings)
    if pid is None:
        state.unlink(missing_ok=True)  # none, or stale: the pid is gone or another program
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        state.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not procs.alive(pid):
            return True
        time.sleep(0.2)
    stack_id = json.loads(state.read_text() or "{}").get("stack_id") if state.exists() else None
    try:
        os.kill(pid, signal.SIGKILL)  # its children die with it (parent-death signals, reaper)
    except ProcessLookupError:
        pass
    if stack_id:
        time.sleep(1.0)
        procs.kill_tagged(procs.STACK_ENV, stack_id)  # in case its reaper was killed too
    state.unlink(missing_ok=True)
    return True
