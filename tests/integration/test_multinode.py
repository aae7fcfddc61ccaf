"""A real multi-node Ray cluster: a head and a worker started as separate nodes with
`ray start` (separate raylets, object stores and resources, on loopback), moto's S3 server
as the store both reach, the three Serve apps deployed from this process as a driver.

The head advertises no CPUs and no role resources, like the chart's head pod; the worker
advertises ``vplab_inference`` and ``vplab_training`` (``Settings.ray_pin_roles``), so every
replica and training task must run on it. Then the worker node is killed (SIGKILL of its
raylet and every process it started) in the middle of a visual-prompting run over a dataset
and in the middle of a training job: the stream fails with a clean gRPC status within a
bounded time, a replacement node joins, the apps recover and the run succeeds on retry, and
the training job completes from its last checkpoint. See docs/MULTI-NODE.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from vplab import procs
from vplab.demo import load_demo_samples
from vplab.images import encode_png
from vplab.masks import encode_rle
from vplab.masks.png import encode_binary_mask
from vplab.procs import free_port
from vplab.rpc import convert, status
from vplab.rpc.v1 import (
    common_pb2,
    segmentation_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from vplab.serving.apps import role_resource
from vplab.settings import Settings
from vplab.storage import open_store
from vplab.tenancy import create_tenant

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY = str(Path(sys.executable).with_name("ray"))
NODE_TAG = "VPLAB_TEST_RAY_NODE"
WORKER_RESOURCES = {role_resource("inference"): 1000, role_resource("training"): 1000}
# Each node has its own address on the loopback network (127.0.0.0/8 is all loopback on
# Linux): Ray rewrites 127.0.0.1 itself to the host's outward address, the others it keeps.
HEAD_IP = "127.0.0.2"
TARGETS = 24  # images of the prediction run (demo models: ~0.1-0.3 s each)


class RayNode:
    """One ``ray start --block`` node; every process it starts carries ``NODE_TAG``."""

    def __init__(self, name: str, ip: str, log_dir: Path, *args: str):
        self.tag = f"{name}-{uuid.uuid4().hex[:8]}"
        self.ip = ip
        env = {
            **os.environ,
            NODE_TAG: self.tag,
            # start_ray (the local stack) may have switched this process to loopback-only
            # mode, which refuses to add a node; the nodes here name their loopback IP.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
            # Notice a dead node in ~3 s, not Ray's default ~15 s.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        ports = [
            f"--node-ip-address={ip}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--disable-usage-stats",
            "--object-store-memory=200000000",
        ]
        self.log = open(log_dir / f"{self.tag}.log", "wb")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            [RAY, "start", "--block", *ports, *args],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # If pytest itself is killed, the node goes too (Ray's processes follow its raylet).
            preexec_fn=lambda parent=os.getpid(): procs.die_with_parent(parent, signal.SIGTERM),
        )

    def kill(self) -> None:
        """SIGKILL the node: its raylet, object store, agents and workers (replicas, tasks)."""
        deadline = time.monotonic() + 20
        quiet_since = time.monotonic()
        # A raylet may still be spawning workers: sweep until nothing tagged is left for 1 s.
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 1:
            if procs.kill_tagged(NODE_TAG, self.tag):
                quiet_since = time.monotonic()
            time.sleep(0.1)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def processes(self) -> list[int]:
        return procs.tagged(NODE_TAG, self.tag)


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"]]


def _wait(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _start_worker(cluster) -> RayNode:
    import ray

    before = {n["NodeID"] for n in _alive_nodes()}
    node = RayNode(
        "worker",
        f"127.0.0.{3 + len(cluster.workers)}",
        cluster.log_dir,
        f"--address={HEAD_IP}:{cluster.gcs_port}",
        "--num-cpus=8",
        f"--resources={json.dumps(WORKER_RESOURCES)}",
    )
    new = _wait(
        lambda: [n for n in _alive_nodes() if n["NodeID"] not in before],
        90,
        "the worker node to join",
    )
    node.node_id = new[0]["NodeID"]  # type: ignore[attr-defined]
    assert ray.is_initialized()
    return node


def _apps_running() -> bool:
    from ray import serve

    apps = serve.status().applications
    return len(apps) == 3 and all(a.status == "RUNNING" for a in apps.values())


def _replica_nodes() -> dict[str, set[str]]:
    """Serve replica class name -> the node ids its live actors run on (from the GCS)."""
    from ray._private import state

    out: dict[str, set[str]] = {}
    for actor in state.actors().values():
        if actor["State"] == "ALIVE" and actor["ActorClassName"].startswith("ServeReplica:"):
            out.setdefault(actor["ActorClassName"], set()).add(actor["Address"]["NodeID"])
    return out


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    import ray

    from vplab.stack import start_serve, stop_serve

    if ray.is_initialized():  # another module's local instance: this test needs its own
        stop_serve(0)
    # Ray's token authentication, as a cluster should run: every node and the driver read
    # the token from ~/.ray/auth_token (created if missing, as a local ray.init does).
    subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True)
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    auth_mode = os.environ.pop("RAY_AUTH_MODE", None)
    # Sets RAY_AUTH_MODE=token for this process and refreshes Ray's cached config, read
    # when ray was imported.
    assert maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    log_dir = tmp_path_factory.mktemp("ray-nodes")
    gcs_port, grpc_port, http_port = free_port(), free_port(), free_port()
    head = RayNode(
        "head",
        HEAD_IP,
        log_dir,
        "--head",
        f"--port={gcs_port}",
        f"--ray-client-server-port={free_port()}",
        "--num-cpus=0",  # like the chart's head: the controller and proxy, never replicas
        "--include-dashboard=false",
        f"--temp-dir={tmp_path_factory.mktemp('ray-tmp')}",
    )
    ns = SimpleNamespace(log_dir=log_dir, gcs_port=gcs_port, head=head, workers=[])
    try:
        settings = Settings(
            demo=True,
            data_dir=tmp_path_factory.mktemp("data"),
            **s3_server.settings("mn"),
            grpc_target=f"127.0.0.1:{grpc_port}",
            ray_address=f"{HEAD_IP}:{gcs_port}",
            ray_pin_roles=True,
            train_checkpoint_every=5,
            train_eval_every=100,
            train_views=2,
        )
        _wait(
            lambda: _connect(settings),
            60,
            "the head node",
            poll=1.0,
        )
        ns.workers.append(_start_worker(ns))
        # Both nodes share this host, hence its ports: one proxy, on the head.
        start_serve(settings, grpc_port=grpc_port, http_port=http_port, proxy_location="HeadOnly")
        store = open_store(settings)
        tenant, key = create_tenant(store, "multinode", settings.api_key_pepper)
        channel = grpc.insecure_channel(settings.grpc_target, options=convert.CHANNEL_OPTIONS)
        ns.settings, ns.store, ns.tenant, ns.key, ns.channel = settings, store, tenant, key, channel
        ns.dataset = _dataset(settings, store, tenant.id)
        yield ns
        channel.close()
    finally:
        stop_serve(0)
        for node in [*ns.workers, head]:
            node.kill()
        if auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth_mode


def _connect(settings: Settings) -> bool:
    import ray

    from vplab.stack import start_ray

    try:
        start_ray(settings)
    except ConnectionError as e:
        print(f"head not reachable yet: {e}")
        ray.shutdown()
        return False
    return True


def _dataset(settings: Settings, store, tenant_id: str) -> SimpleNamespace:
    from vplab.datasets import DatasetStore

    datasets = DatasetStore(store, settings)
    ds = datasets.create_dataset(tenant_id, "cells").id
    samples = load_demo_samples(TARGETS + 1, 128, seed=21)
    ids = [datasets.add_image(tenant_id, ds, encode_png(img)) for img, _ in samples]
    for image_id, (_, mask) in zip(ids[:4], samples[:4]):
        datasets.put_label(tenant_id, ds, image_id, encode_binary_mask(mask))
    return SimpleNamespace(id=ds, ids=ids, ref_mask=samples[0][1])


def _md(cluster, app: str):
    return convert.call_metadata(app, convert.bearer(cluster.key))


def _visual_prompt_stream(cluster, timeout: float = 300):
    stub = segmentation_pb2_grpc.SegmentationStub(cluster.channel)
    request = convert.visual_prompt_request_to_pb(
        cluster.dataset.id,
        [(cluster.dataset.ids[0], encode_rle(cluster.dataset.ref_mask))],
        cluster.dataset.ids[1:],
    )
    return stub.VisualPrompt(request, metadata=_md(cluster, convert.SEGMENTATION), timeout=timeout)


def _kill_worker(cluster) -> float:
    """SIGKILL the current worker node; the monotonic time of the kill."""
    dead = cluster.workers[-1]
    t0 = time.monotonic()
    dead.kill()
    assert not dead.processes(), "processes of the killed node survived"
    _wait(
        lambda: dead.node_id not in {n["NodeID"] for n in _alive_nodes()},
        60,
        "the GCS to see the worker node dead",
    )
    print(f"worker node dead in the GCS {time.monotonic() - t0:.1f} s after the kill")
    return t0


def test_replicas_and_training_run_on_the_worker_node(cluster):
    import ray

    _wait(_apps_running, 120, "the three apps to run")
    head_id = next(
        n["NodeID"] for n in _alive_nodes() if n["NodeID"] != cluster.workers[-1].node_id
    )
    nodes = _replica_nodes()
    assert set(nodes) == {
        "ServeReplica:features:FeaturesDeployment",
        "ServeReplica:segmentation:SegmentationDeployment",
        "ServeReplica:training:TrainingDeployment",
    }, nodes
    assert all(ids == {cluster.workers[-1].node_id} for ids in nodes.values()), nodes
    assert head_id not in set().union(*nodes.values())
    # The head has no role resources: the whole role budget of the cluster is the worker's.
    assert ray.cluster_resources()[role_resource("training")] == 1000


def test_worker_death_mid_prediction_run_fails_cleanly_and_recovers(cluster):
    _wait(_apps_running, 120, "the three apps to run")
    stream = _visual_prompt_stream(cluster)
    first = next(stream)  # the run is under way on the worker node
    assert first.image_id in cluster.dataset.ids
    killed_at = _kill_worker(cluster)
    with pytest.raises(grpc.RpcError) as failed:
        for _ in stream:
            pass
    waited = time.monotonic() - killed_at
    error = failed.value
    print(f"stream failed {waited:.1f} s after the kill: {error.code()} {error.details()!r}")
    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), error
    # Serve's proxy says INTERNAL with Ray's actor message; REST callers and the SDK get a
    # retryable 503 (the gateway's status mapping, tested on its own in test_gateway.py).
    assert status.rpc_error_parts(error)[2] == 503, error.details()
    assert waited < 60, "the stream hung after its replica's node died"
    # While no node can host a replica, a new run fails fast instead of hanging.
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        list(_visual_prompt_stream(cluster, timeout=5))
    print(f"a run without a node: {refused.value.code()} in {time.monotonic() - t0:.1f} s")
    cluster.workers.append(_start_worker(cluster))
    # The replicas come back on the new node; the run succeeds when the client retries.
    _wait(_apps_running, 180, "the apps to recover on the new node")
    results = {r.image_id: r for r in _visual_prompt_stream(cluster)}
    assert set(results) == set(cluster.dataset.ids[1:])
    nodes = _replica_nodes()
    assert all(ids == {cluster.workers[-1].node_id} for ids in nodes.values()), nodes


def test_worker_death_mid_training_resumes_from_the_checkpoint(cluster):
    _wait(_apps_running, 180, "the three apps to run")
    stub = training_pb2_grpc.TrainingStub(cluster.channel)
    md = _md(cluster, convert.TRAINING)
    job = stub.StartTraining(
        training_pb2.StartTrainingRequest(dataset_id=cluster.dataset.id, method="epeft", steps=60),
        metadata=md,
        timeout=120,
    ).job

    def get():
        return stub.GetJob(
            training_pb2.GetJobRequest(job_id=job.job_id), metadata=md, timeout=30
        ).job

    # Past the first checkpoint (every 5 steps), well before the end.
    at_kill = _wait(lambda: (j := get()).step >= 7 and j, 240, "training to pass a checkpoint").step
    assert at_kill < 60
    _kill_worker(cluster)
    cluster.workers.append(_start_worker(cluster))
    # GetJob fails while the training app has no replica, then works again.
    done = _wait(
        lambda: _job_if_finished(get),
        420,
        "the job to finish after the node was replaced",
        poll=2.0,
    )
    assert done.state == common_pb2.SUCCEEDED, done
    assert done.model_id and done.step == 60
    events = cluster_events(cluster, job.job_id)
    starts = [i for i, e in enumerate(events) if e.get("phase") == "start"]
    assert [events[i]["message"] for i in starts] == ["attempt 1", "attempt 2"], events
    # The second attempt went on from a checkpoint (every 5 steps), not from step 1.
    after = [e["step"] for e in events[starts[1] + 1 :] if e.get("step")]
    print(f"killed at step {at_kill}; attempt 2 went on at step {after[0]}")
    assert after[0] > 5, after


def _job_if_finished(get):
    try:
        job = get()
    except grpc.RpcError:
        return None
    terminal = (
        common_pb2.SUCCEEDED,
        common_pb2.FAILED,
        common_pb2.CANCELLED,
    )
    return job if job.state in terminal else None


def cluster_events(cluster, job_id: str) -> list[dict]:
    from vplab.jobs import JobStore

    return JobStore(cluster.store).events(cluster.tenant.id, job_id)
