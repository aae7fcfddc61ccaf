"""The real stack: a local Ray instance with the Serve gRPC proxy running the three apps,
moto's S3 server used through S3Store, and the gateway under uvicorn on a free port.

One Ray instance for the module (a cold start costs ~20 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import grpc
import httpx
import numpy as np
import pytest

from vplab.client import VPLabAPIError, VPLabClient
from vplab.demo import load_demo_samples
from vplab.images import encode_png
from vplab.masks import encode_rle
from vplab.procs import free_port
from vplab.rpc.v1 import (
    common_pb2,
    features_pb2,
    features_pb2_grpc,
    predictions_pb2,
    predictions_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from vplab.settings import Settings
from vplab.storage import keys, open_store
from vplab.tenancy import create_tenant

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _fuzz import OPERATIONS, run_schemathesis
from _gateway_harness import UvicornThread, bomb_png

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(s3_server, tmp_path_factory):
    from services.gateway.main import create_app
    from vplab.stack import start_serve, stop_serve

    grpc_port, http_port = free_port(), free_port()
    settings = Settings(
        demo=True,
        data_dir=tmp_path_factory.mktemp("data"),
        **s3_server.settings("it"),
        grpc_target=f"127.0.0.1:{grpc_port}",
        train_checkpoint_every=3,
        train_eval_every=3,
        train_views=2,
        quota_concurrent_jobs=4,
        # Decoder batching through @serve.batch (off by default on CPU): every point prompt
        # of this module goes through it, concurrent ones in batches.
        segment_batch_max=4,
        segment_batch_wait_s=0.05,
    )
    store = open_store(settings)
    tenants = {}
    for name in ("acme", "globex"):
        tenant, key = create_tenant(store, name, settings.api_key_pepper)
        tenants[name] = SimpleNamespace(id=tenant.id, key=key)
    start_serve(settings, grpc_port=grpc_port, http_port=http_port, num_cpus=8)
    gateway = UvicornThread(create_app(settings)).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    yield SimpleNamespace(
        settings=settings, store=store, tenants=tenants, url=gateway.url, channel=channel
    )
    channel.close()
    gateway.stop()
    stop_serve()


def _client(stack, tenant: str) -> VPLabClient:
    return VPLabClient(stack.url, stack.tenants[tenant].key, timeout=300)


def _md(stack, tenant: str, app: str, model_id: str | None = None):
    md = [("application", app), ("authorization", f"Bearer {stack.tenants[tenant].key}")]
    if model_id:
        md.append(("multiplexed_model_id", model_id))
    return md


@pytest.fixture(scope="module")
def loops(stack):
    """Run the whole user loop once per tenant (REST only); tests below inspect the results."""
    out = {}
    for seed, name in enumerate(("acme", "globex")):
        samples = load_demo_samples(
            4, 128, seed=7 + seed
        )  # different images: ids are content hashes
        c = _client(stack, name)
        ds = c.create_dataset(f"{name}-cells")["id"]
        ids = [c.upload_image(ds, encode_png(img)) for img, _ in samples]
        ref_mask = samples[0][1]
        seg = c.segment(ids[0], points=[[64, 64], [5, 5]], labels=[1, 0], multimask=True)
        refined = c.segment(ids[0], points=[[64, 64]], labels=[1], mask_input=seg.masks[0])
        vp = c.visual_prompt(ds, references=[(ids[0], ref_mask)])
        versions = [c.put_label(ds, i, m) for i, (_, m) in zip(ids[1:], samples[1:])]
        events = []
        job = c.start_training(ds, method="epeft", steps=6)
        done = c.wait_for_training(job["job_id"], on_event=events.append, timeout=300)
        tuned_seg = c.segment(ids[0], points=[[64, 64]], labels=[1], model_id=done["model_id"])
        tuned_vp = c.visual_prompt(ds, references=[(ids[0], ref_mask)], model_id=done["model_id"])
        export = c.export_model(done["model_id"], stack.settings.data_dir / f"{name}-adapter.zip")
        out[name] = SimpleNamespace(
            dataset=ds,
            ids=ids,
            seg=seg,
            refined=refined,
            vp=vp,
            versions=versions,
            job=job,
            done=done,
            events=events,
            tuned_seg=tuned_seg,
            tuned_vp=tuned_vp,
            export=export,
        )
    return out


def test_the_local_ray_instance_uses_loopback_only(stack):
    import ray

    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    assert ray.util.get_node_ip_address() == "127.0.0.1"


def test_health_and_metrics(stack):
    r = httpx.get(f"{stack.url}/healthz", timeout=30)
    assert r.status_code == 200, r.text
    assert set(r.json()["apps"]) == {"features", "segmentation", "training"}


def test_full_loop_for_two_tenants(stack, loops):
    for _name, run in loops.items():
        assert run.seg.masks.shape == (3, 128, 128) and len(run.seg.scores) == 3
        assert run.refined.masks.shape[1:] == (128, 128)
        assert sorted(r.image_id for r in run.vp) == sorted(
            run.ids[1:]
        )  # every non-reference image
        assert run.versions == [1, 1, 1]
        assert run.done["state"] == "SUCCEEDED" and run.done["model_id"], run.done
        assert run.events[-1]["state"] == "SUCCEEDED"
        assert any(e.get("phase") == "train" for e in run.events)
        assert run.tuned_seg.masks.shape[1:] == (128, 128)
        assert len(run.tuned_vp) == 3
        with zipfile.ZipFile(run.export) as z:
            assert set(z.namelist()) == {"adapter.safetensors", "config.json"}
            config = json.loads(z.read("config.json"))
        assert config["method"] == "epeft" and config["base"]["name"] == "sam_mini"
    # The two tenants trained separately and own separate models.
    assert loops["acme"].done["model_id"] != loops["globex"].done["model_id"]


def test_embedding_cache_is_per_tenant_and_hits_on_repeat(stack, loops):
    run = loops["acme"]
    stub = features_pb2_grpc.FeaturesStub(stack.channel)
    first = stub.Embed(
        features_pb2.EmbedRequest(image_id=run.ids[0]), metadata=_md(stack, "acme", "features")
    )
    assert first.cache_hit and first.cache_key.startswith(
        f"tenants/{stack.tenants['acme'].id}/cache/"
    )
    assert stack.store.exists(first.cache_key)
    dino = stub.Embed(
        features_pb2.EmbedRequest(image_id=run.ids[0], encoder="dinov2"),
        metadata=_md(stack, "acme", "features"),
    )
    assert dino.encoder_id.startswith("dinov2.")


def test_prompt_free_ptsam_model(stack, loops):
    c = _client(stack, "acme")
    job = c.start_training(loops["acme"].dataset, method="ptsam-md", steps=3)
    done = c.wait_for_training(job["job_id"], timeout=300)
    assert done["state"] == "SUCCEEDED", done
    mask, score = c.auto_segment(loops["acme"].ids[0], done["model_id"])
    assert mask.shape == (128, 128) and 0.0 <= score <= 1.0
    # A prompted model cannot auto-segment; a prompt-free one cannot take prompts.
    with pytest.raises(VPLabAPIError) as e:
        c.auto_segment(loops["acme"].ids[0], loops["acme"].done["model_id"])
    assert e.value.status == 400


def test_a_named_training_recipe_reaches_the_trainer(stack, loops):
    """#12 point 6 over REST: the micro-sam recipe trains the best of three outputs, so the
    model records best_of_3 (the default recipe trains token 0); a recipe the method does
    not have is a 400 from the training service, nothing queued."""
    c = _client(stack, "acme")
    job = c.start_training(loops["acme"].dataset, "freeze-encoder", steps=2, recipe="micro-sam")
    assert job["recipe"] == "micro-sam"
    done = c.wait_for_training(job["job_id"], timeout=300)
    assert done["state"] == "SUCCEEDED" and done["recipe"] == "micro-sam", done
    assert done["val_on_train"] is True  # a handful of labels: every one trained
    config = {m["model_id"]: m["config"] for m in c.list_models()}[done["model_id"]]
    assert config["output"] == "best_of_3" and config["method"] == "freeze-encoder"
    before = len(c.list_trainings())
    with pytest.raises(VPLabAPIError) as e:
        c.start_training(loops["acme"].dataset, "epeft", steps=2, recipe="micro-sam")
    assert e.value.status == 400 and "no recipe" in str(e.value)
    assert len(c.list_trainings()) == before


def test_cross_tenant_rest_is_not_found(stack, loops):
    a, b = loops["acme"], _client(stack, "globex")
    attempts = [
        lambda: b.get_dataset(a.dataset),
        lambda: b.list_images(a.dataset),
        lambda: b.get_image(a.ids[0]),
        lambda: b.segment(a.ids[0], points=[[5, 5]]),
        lambda: b.visual_prompt(a.dataset, references=[(a.ids[0], np.ones((128, 128), bool))]),
        lambda: b.put_label(a.dataset, a.ids[1], np.ones((128, 128), bool)),
        lambda: b.get_training(a.job["job_id"]),
        lambda: b.cancel_training(a.job["job_id"]),
        lambda: b.get_model(a.done["model_id"]),
        lambda: b.export_model(a.done["model_id"], stack.settings.data_dir / "stolen.zip"),
        lambda: b.segment(loops["globex"].ids[0], points=[[5, 5]], model_id=a.done["model_id"]),
        lambda: b.start_training(a.dataset, steps=2),
    ]
    for i, attempt in enumerate(attempts):
        with pytest.raises(VPLabAPIError) as e:
            attempt()
            pytest.fail(f"attempt {i} succeeded across tenants")
        assert e.value.status == 404, (i, e.value.status, e.value.message)
    assert not (stack.settings.data_dir / "stolen.zip").exists()


def test_cross_tenant_grpc_is_not_found(stack, loops):
    a = loops["acme"]
    calls = [
        lambda: features_pb2_grpc.FeaturesStub(stack.channel).Embed(
            features_pb2.EmbedRequest(image_id=a.ids[0]), metadata=_md(stack, "globex", "features")
        ),
        lambda: segmentation_pb2_grpc.SegmentationStub(stack.channel).SegmentPrompt(
            segmentation_pb2.SegmentPromptRequest(
                image_id=a.ids[0], points=[common_pb2.Point(x=1, y=1, label=1)]
            ),
            metadata=_md(stack, "globex", "segmentation"),
        ),
        lambda: segmentation_pb2_grpc.SegmentationStub(stack.channel).SegmentPrompt(
            segmentation_pb2.SegmentPromptRequest(
                image_id=loops["globex"].ids[0],
                model_id=a.done["model_id"],
                points=[common_pb2.Point(x=1, y=1, label=1)],
            ),
            metadata=_md(stack, "globex", "segmentation", a.done["model_id"]),
        ),
        lambda: list(
            segmentation_pb2_grpc.SegmentationStub(stack.channel).VisualPrompt(
                segmentation_pb2.VisualPromptRequest(
                    dataset_id=a.dataset,
                    target_image_ids=[a.ids[1]],
                    references=[
                        segmentation_pb2.Reference(
                            image_id=a.ids[0],
                            mask=common_pb2.RleMask(height=1, width=1, counts="01"),
                        )
                    ],
                ),
                metadata=_md(stack, "globex", "segmentation"),
            )
        ),
        lambda: training_pb2_grpc.TrainingStub(stack.channel).GetJob(
            training_pb2.GetJobRequest(job_id=a.job["job_id"]),
            metadata=_md(stack, "globex", "training"),
        ),
        lambda: list(
            training_pb2_grpc.TrainingStub(stack.channel).WatchJob(
                training_pb2.WatchJobRequest(job_id=a.job["job_id"]),
                metadata=_md(stack, "globex", "training"),
            )
        ),
        lambda: training_pb2_grpc.TrainingStub(stack.channel).StartTraining(
            training_pb2.StartTrainingRequest(dataset_id=a.dataset, method="epeft", steps=2),
            metadata=_md(stack, "globex", "training"),
        ),
    ]
    for i, call in enumerate(calls):
        with pytest.raises(grpc.RpcError) as e:
            call()
            pytest.fail(f"call {i} succeeded across tenants")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, (i, e.value.details())
    listed = training_pb2_grpc.TrainingStub(stack.channel).ListJobs(
        training_pb2.ListJobsRequest(), metadata=_md(stack, "globex", "training")
    )
    assert a.job["job_id"] not in {j.job_id for j in listed.jobs}


def test_concurrent_prompts_batched_answer_like_single_ones(stack, loops):
    a = loops["acme"]
    stub = segmentation_pb2_grpc.SegmentationStub(stack.channel)
    md = _md(stack, "acme", "segmentation")
    requests = [
        segmentation_pb2.SegmentPromptRequest(
            image_id=a.ids[0],
            points=[common_pb2.Point(x=16.0 + 12 * i, y=64.0, label=1)],
            multimask_output=True,
        )
        for i in range(8)
    ]
    bad = segmentation_pb2.SegmentPromptRequest(
        image_id=a.ids[0], points=[common_pb2.Point(x=900.0, y=1.0, label=1)]
    )
    futures = [stub.SegmentPrompt.future(r, metadata=md, timeout=120) for r in requests]
    bad_future = stub.SegmentPrompt.future(bad, metadata=md, timeout=120)
    together = [f.result() for f in futures]
    with pytest.raises(grpc.RpcError) as e:
        bad_future.result()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # it failed alone
    for request, got in zip(requests, together):
        alone = stub.SegmentPrompt(request, metadata=md, timeout=120)
        assert [m.mask.counts for m in got.masks] == [m.mask.counts for m in alone.masks]
        assert [m.score for m in got.masks] == pytest.approx(
            [m.score for m in alone.masks], abs=1e-4
        )


def test_grpc_visual_prompt_applies_the_dataset_rules(stack, loops):
    """The membership and default-target rules hold for direct gRPC callers too."""
    a = loops["acme"]
    c = _client(stack, "acme")
    other = c.create_dataset("acme-other")["id"]
    outsider = c.upload_image(other, encode_png(load_demo_samples(1, 64, seed=99)[0][0]))
    ref_mask = c.get_label(a.dataset, a.ids[1])  # any mask of the reference's size
    ref = segmentation_pb2.Reference(
        image_id=a.ids[1],
        mask=common_pb2.RleMask(
            height=ref_mask.shape[0], width=ref_mask.shape[1], counts=encode_rle(ref_mask)["counts"]
        ),
    )
    seg = segmentation_pb2_grpc.SegmentationStub(stack.channel)
    md = _md(stack, "acme", "segmentation")

    def call(**fields):
        return list(seg.VisualPrompt(segmentation_pb2.VisualPromptRequest(**fields), metadata=md))

    for fields in (
        dict(dataset_id=a.dataset, references=[ref], target_image_ids=[outsider]),  # target outside
        dict(  # reference outside
            dataset_id=a.dataset,
            references=[segmentation_pb2.Reference(image_id=outsider, mask=ref.mask)],
            target_image_ids=[a.ids[2]],
        ),
        dict(dataset_id="d-nonexistent", references=[ref], target_image_ids=[a.ids[2]]),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call(**fields)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        call(references=[ref], target_image_ids=[a.ids[2]])  # no dataset id
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # No targets: every image of the dataset except the reference, as over REST.
    results = call(dataset_id=a.dataset, references=[ref])
    assert sorted(r.image_id for r in results) == sorted(i for i in a.ids if i != a.ids[1])
    assert outsider not in {r.image_id for r in results}


def test_grpc_auth_and_bad_arguments(stack, loops):
    seg = segmentation_pb2_grpc.SegmentationStub(stack.channel)
    req = segmentation_pb2.SegmentPromptRequest(
        image_id=loops["acme"].ids[0], points=[common_pb2.Point(x=1, y=1, label=1)]
    )
    for md in (
        [("application", "segmentation")],
        [("application", "segmentation"), ("authorization", "Bearer vpl_" + "A" * 43)],
    ):
        with pytest.raises(grpc.RpcError) as e:
            seg.SegmentPrompt(req, metadata=md)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    bad = segmentation_pb2.SegmentPromptRequest(
        image_id=loops["acme"].ids[0], points=[common_pb2.Point(x=9999, y=1, label=1)]
    )
    with pytest.raises(grpc.RpcError) as e:
        seg.SegmentPrompt(bad, metadata=_md(stack, "acme", "segmentation"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "outside" in e.value.details()
    too_many = segmentation_pb2.SegmentPromptRequest(
        image_id=loops["acme"].ids[0], points=[common_pb2.Point(x=1, y=1, label=1)] * 1000
    )
    with pytest.raises(grpc.RpcError) as e:
        seg.SegmentPrompt(too_many, metadata=_md(stack, "acme", "segmentation"))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("vplab-http-status", "413") in tuple(e.value.trailing_metadata())


def test_bad_rest_inputs_are_4xx_and_write_nothing(stack, loops):
    a = loops["acme"]
    key = stack.tenants["acme"].key
    h = {"Authorization": f"Bearer {key}"}
    before = stack.store.list("")
    probes = [
        (
            "POST",
            f"/v1/datasets/{a.dataset}/images",
            dict(files={"file": ("x.png", b"not an image")}),
            400,
        ),
        (
            "POST",
            f"/v1/datasets/{a.dataset}/images",
            dict(files={"file": ("b.png", bomb_png())}),
            413,
        ),
        (
            "POST",
            f"/v1/images/{a.ids[0]}/segment",
            dict(json={"points": [[1e6, 3]], "labels": [1]}),
            400,
        ),
        (
            "POST",
            f"/v1/images/{a.ids[0]}/segment",
            dict(json={"points": [[1, 3]], "labels": [1, 0]}),
            400,
        ),
        (
            "POST",
            f"/v1/images/{'0' * 64}/segment",
            dict(json={"points": [[1, 3]], "labels": [1]}),
            404,
        ),
        (
            "POST",
            "/v1/images/not-a-sha/segment",
            dict(json={"points": [[1, 3]], "labels": [1]}),
            400,
        ),
        (
            "POST",
            f"/v1/datasets/{a.dataset}/visual-prompt",
            dict(
                json={
                    "references": [
                        {"image_id": a.ids[0], "mask_rle": {"size": [128, 128], "counts": "@@@"}}
                    ]
                }
            ),
            400,
        ),
        (
            "POST",
            f"/v1/datasets/{a.dataset}/visual-prompt",
            dict(
                json={
                    "references": [
                        {"image_id": a.ids[0], "mask_rle": encode_rle(np.ones((5, 5), bool))}
                    ]
                }
            ),
            400,
        ),
        (
            "PUT",
            f"/v1/datasets/{a.dataset}/labels/{a.ids[0]}",
            dict(
                content=encode_png(np.ones((3, 3), np.uint8)), headers={"content-type": "image/png"}
            ),
            400,
        ),
        (
            "POST",
            "/v1/trainings",
            dict(json={"dataset_id": a.dataset, "method": "nope", "steps": 5}),
            400,
        ),
        (
            "POST",
            "/v1/trainings",
            dict(json={"dataset_id": a.dataset, "method": "epeft", "steps": -1}),
            400,
        ),
        (
            "POST",
            "/v1/trainings",
            dict(json={"dataset_id": a.dataset, "method_config": {"nope": 1}, "steps": 2}),
            400,
        ),
        ("GET", "/v1/trainings/j-000000000000", {}, 404),
        ("GET", "/v1/models/m-000000000000/export", {}, 404),
    ]
    for method, path, kwargs, expected in probes:
        headers = {**h, **kwargs.pop("headers", {})}
        r = httpx.request(method, stack.url + path, headers=headers, timeout=120, **kwargs)
        assert r.status_code == expected, (method, path, r.status_code, r.text)
        assert "error" in r.json()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        r = httpx.get(f"{stack.url}/v1/datasets", headers=headers, timeout=30)
        assert r.status_code == 401
    assert stack.store.list("") == before


def _job_state(stack, tenant: str, job_id: str) -> dict:
    return stack.store.get_json(keys.job_state(stack.tenants[tenant].id, job_id))


def test_training_survives_its_worker_being_killed(stack, loops):
    c = _client(stack, "globex")
    # 24 steps: past the kill (step >= 5) with room to resume; 60 ran past the 300 s wait on
    # a loaded machine (CI, 2026-12-02: ~6 s a step with validation every 3 steps).
    job = c.start_training(loops["globex"].dataset, method="epeft", steps=24)
    job_id = job["job_id"]
    deadline = time.monotonic() + 240
    state = _job_state(stack, "globex", job_id)
    while state["step"] < 5:  # past the first checkpoint (every 3 steps)
        assert time.monotonic() < deadline, state
        assert state["state"] in ("QUEUED", "RUNNING"), state
        time.sleep(0.1)
        state = _job_state(stack, "globex", job_id)
    pid, step_at_kill = state["worker_pid"], state["step"]
    assert pid and state["attempts"] == 1
    os.kill(pid, signal.SIGKILL)

    events = []
    done = c.wait_for_training(job_id, on_event=events.append, timeout=300)
    assert done["state"] == "SUCCEEDED", done
    assert done["attempts"] >= 2 and done["model_id"]
    restarts = [e for e in events if e.get("phase") == "start"]
    assert [e["message"] for e in restarts][:2] == ["attempt 1", "attempt 2"]
    # The second attempt resumed from a checkpoint instead of starting over.
    second = events.index(restarts[1])
    first_step_after = next(e["step"] for e in events[second:] if e.get("phase") == "train")
    assert 1 < first_step_after <= step_at_kill + 1
    ckpt_steps = [
        keys.parse_ckpt_step(k)
        for k in stack.store.list(keys.job_ckpt_prefix(stack.tenants["globex"].id, job_id))
    ]
    assert max(ckpt_steps) == 24


def test_cancel_a_running_job(stack, loops):
    c = _client(stack, "acme")
    job = c.start_training(loops["acme"].dataset, method="epeft", steps=500)
    deadline = time.monotonic() + 120
    while _job_state(stack, "acme", job["job_id"])["step"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    c.cancel_training(job["job_id"])
    done = c.wait_for_training(job["job_id"], timeout=120)
    assert done["state"] == "CANCELLED" and not done["model_id"]
    with pytest.raises(VPLabAPIError) as e:
        c.cancel_training(job["job_id"])
    assert e.value.status == 409


def test_readme_sdk_example_runs_verbatim(stack, tmp_path, monkeypatch):
    """The README's SDK snippet is executed as written (url/api_key as `make run` prints them)."""
    import re as _re

    from vplab.demo import write_demo_dataset

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = _re.search(r"```python\n(.*?)```", readme, _re.S).group(1)
    monkeypatch.chdir(tmp_path)
    write_demo_dataset(tmp_path / "demo", n=5, size=160, seed=11)
    scope = {"url": stack.url, "api_key": stack.tenants["acme"].key}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["done"]["state"] == "SUCCEEDED" and scope["run"]["done"] == 4
    assert len(scope["held_out"]) == 2 and scope["ev"]["state"] == "SUCCEEDED"
    assert scope["ev"]["model_id"] == scope["done"]["model_id"] and scope["ev"]["n_images"] == 2
    assert (tmp_path / "adapter.zip").stat().st_size > 0


def test_deployments_export_prometheus_metrics(stack, loops):
    """Per-RPC counts/latency and cache hits/misses through Ray's metrics agent."""
    import ray

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:  # the agent exports on an interval
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if (
            "vplab_rpc_requests" in text
            and "vplab_embedding_cache" in text
            and "vplab_jobs" in text
        ):
            break
        time.sleep(2)
    assert 'method="SegmentPrompt"' in text and "vplab_rpc_latency_ms_bucket" in text
    assert "vplab_embedding_cache" in text and "vplab_jobs" in text


def test_schemathesis_against_the_real_stack(stack, loops):
    """The OpenAPI contract holds against the real services too (its own tenant)."""
    _tenant, key = create_tenant(stack.store, "fuzz", stack.settings.api_key_pepper)
    report = run_schemathesis(stack.url, key, 4)
    assert f"Tested: {OPERATIONS}" in report, report


def _replica_pids(name: str) -> list[int]:
    """Live Serve replica processes of ``name`` (Ray titles them ``ray::ServeReplica:...``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(f"ray::ServeReplica:{name}".encode()):
            pids.append(int(entry))
    return pids


def _three_class_scenes(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Miniworld source scenes with their first three classes (blob, polygon, ring)."""
    from vplab.miniworld import render

    scenes = [render("source", 0, i, size=128) for i in range(n)]
    return [(s.image, np.where(s.label_map <= 3, s.label_map, 0).astype(np.uint8)) for s in scenes]


def test_prediction_run_survives_a_replica_kill_then_review_train_and_rerun(stack):
    c = _client(stack, "acme")
    ds = c.create_dataset(
        "acme-3", classes=[{"name": "blob"}, {"name": "polygon"}, {"name": "ring"}]
    )
    scenes = _three_class_scenes(14)
    ids = [c.upload_image(ds["id"], encode_png(img)) for img, _ in scenes]
    labels = {i: label for i, (_, label) in zip(ids, scenes)}
    for image_id in ids[:2]:
        c.put_label(ds["id"], image_id, labels[image_id])
    run = c.start_prediction(ds["id"], references=ids[:2])
    assert run["state"] == "QUEUED" and run["total"] == 12
    assert [r["label_version"] for r in run["references"]] == [1, 1]
    tenant = stack.tenants["acme"].id
    deadline = time.monotonic() + 240
    state = stack.store.get_json(keys.job_state(tenant, run["run_id"], keys.PREDICTIONS))
    while state["done"] < 1:
        assert time.monotonic() < deadline and state["state"] in ("QUEUED", "RUNNING"), state
        time.sleep(0.05)
        state = stack.store.get_json(keys.job_state(tenant, run["run_id"], keys.PREDICTIONS))
    replicas = _replica_pids("segmentation")
    assert len(replicas) == 1, replicas
    os.kill(replicas[0], signal.SIGKILL)
    killed_at = state["done"]
    events: list[dict] = []
    done = c.wait_for_prediction(run["run_id"], on_event=events.append, timeout=300)
    assert killed_at < 12, "the run ended before the kill: it proves nothing"
    assert done["state"] == "SUCCEEDED" and done["errors"] == [], done
    assert done["done"] == done["total"] == 12
    targets = [e["image_id"] for e in events if e["phase"] == "target"]
    assert sorted(targets) == sorted(ids[2:])  # every target once: none lost, none twice
    assert _replica_pids("segmentation") and _replica_pids("segmentation") != replicas
    results = c.prediction_results(run["run_id"], order="uncertainty", limit=5)
    assert len(results) == 12 and {r["image_id"] for r in results} == set(ids[2:])
    assert [r["uncertainty"] for r in results] == sorted(
        (r["uncertainty"] for r in results), reverse=True
    )
    one = c.prediction_result(run["run_id"], ids[2])
    assert set(one["classes"]) <= {"1", "2", "3"} and one["review"] is None
    assert set(np.unique(c.prediction_label_map(run["run_id"], ids[2]))) <= {0, 1, 2, 3}
    assert c.list_predictions(ds["id"])[0]["run_id"] == run["run_id"]

    # Review: accept three, edit one; each becomes a label version with its provenance.
    for image_id in ids[2:5]:
        assert c.accept_prediction(run["run_id"], image_id)["verdict"] == "accepted"
    edited = c.accept_prediction(run["run_id"], ids[5], edited=labels[ids[5]])
    assert edited["verdict"] == "edited" and edited["label_version"] == 1
    assert np.array_equal(c.get_label_map(ds["id"], ids[5]), labels[ids[5]])
    assert c.reject_prediction(run["run_id"], ids[6])["verdict"] == "rejected"
    with pytest.raises(VPLabAPIError) as again:
        c.accept_prediction(run["run_id"], ids[2])
    assert again.value.status == 409
    details = {d["image_id"]: d for d in c.image_details(ds["id"])}
    assert details[ids[0]]["provenance"] == {"source": "manual", "run_id": None, "model_id": None}
    assert details[ids[2]]["provenance"]["source"] == "accepted"
    assert details[ids[5]]["provenance"]["source"] == "edited"
    assert details[ids[6]]["label_version"] is None
    assert details[ids[6]]["prediction"]["review"] == "rejected"

    # Four more labels (10 in all: training holds 2 out), then train on them: the job
    # reports the round's gain on the held-out images.
    for image_id in ids[7:11]:
        c.put_label(ds["id"], image_id, labels[image_id])
    job = c.start_training(ds["id"], method="epeft", steps=3)
    trained = c.wait_for_training(job["job_id"], timeout=300)
    assert trained["state"] == "SUCCEEDED", trained
    assert trained["gain_images"] == 2, trained
    assert 0.0 <= trained["zero_shot_miou"] <= 1.0 and 0.0 <= trained["tuned_miou"] <= 1.0

    # Evaluations of the stock pipeline and of the tuned model, on what it did not train on.
    stock = c.start_evaluation(ds["id"], references=ids[:2])
    tuned = c.start_evaluation(ds["id"], references=ids[:2], model_id=trained["model_id"])
    assert stock["total"] == 8 and tuned["total"] in (1, 2)  # the held-out, less references
    stock = c.wait_for_evaluation(stock["evaluation_id"], timeout=300)
    tuned = c.wait_for_evaluation(tuned["evaluation_id"], timeout=300)
    for e in (stock, tuned):
        assert e["state"] == "SUCCEEDED" and 0.0 <= e["miou"] <= 1.0, e
        assert set(e["per_class"]) == {"1", "2", "3"} and len(e["per_image"]) == e["n_images"]
    assert tuned["model_id"] == trained["model_id"] and tuned["n_images"] == tuned["total"]
    assert {e["evaluation_id"] for e in c.list_evaluations(ds["id"])} == {
        stock["evaluation_id"],
        tuned["evaluation_id"],
    }
    second = c.start_prediction(
        ds["id"], references=ids[:2], model_id=trained["model_id"], targets=ids[12:]
    )
    second = c.wait_for_prediction(second["run_id"], timeout=300)
    assert second["state"] == "SUCCEEDED" and second["done"] == 2 and second["errors"] == []
    assert second["model_id"] == trained["model_id"]
    latest = {d["image_id"]: d for d in c.image_details(ds["id"])}
    assert latest[ids[12]]["prediction"]["run_id"] == second["run_id"]

    # Another tenant: every new route and RPC answers NOT_FOUND and changes nothing.
    other = _client(stack, "globex")
    rid, img = run["run_id"], ids[7]
    for call in (
        lambda: other.get_prediction(rid),
        lambda: other.cancel_prediction(rid),
        lambda: other.prediction_results(rid),
        lambda: other.prediction_result(rid, img),
        lambda: other.prediction_label_map(rid, img),
        lambda: other.accept_prediction(rid, img),
        lambda: other.reject_prediction(rid, img),
        lambda: list(other.iter_prediction_events(rid)),
        lambda: other.list_predictions(ds["id"]),
        lambda: other.start_prediction(ds["id"], references=ids[:2]),
        lambda: other.image_details(ds["id"]),
        lambda: other.get_evaluation(stock["evaluation_id"]),
        lambda: other.list_evaluations(ds["id"]),
        lambda: other.start_evaluation(ds["id"], references=ids[:2]),
    ):
        with pytest.raises(VPLabAPIError) as e:
            call()
        assert e.value.status == 404, e.value
    stub = predictions_pb2_grpc.PredictionsStub(stack.channel)
    for method, request in (
        ("GetPrediction", predictions_pb2.GetPredictionRequest(run_id=rid)),
        ("CancelPrediction", predictions_pb2.CancelPredictionRequest(run_id=rid)),
        ("ListPredictions", predictions_pb2.ListPredictionsRequest(dataset_id=ds["id"])),
        ("ListEvaluations", predictions_pb2.ListPredictionsRequest(dataset_id=ds["id"])),
        (
            "GetEvaluation",
            predictions_pb2.GetEvaluationRequest(evaluation_id=stock["evaluation_id"]),
        ),
    ):
        with pytest.raises(grpc.RpcError) as e:
            getattr(stub, method)(request, metadata=_md(stack, "globex", "training"), timeout=30)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, (method, e.value)
    with pytest.raises(grpc.RpcError) as e:
        list(
            stub.WatchPrediction(
                predictions_pb2.WatchPredictionRequest(run_id=rid),
                metadata=_md(stack, "globex", "training"),
                timeout=30,
            )
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    mine = stub.GetPrediction(
        predictions_pb2.GetPredictionRequest(run_id=rid),
        metadata=_md(stack, "acme", "training"),
        timeout=30,
    )
    assert mine.run.done == 12 and not c.accept_prediction(rid, img).get("error")


def test_a_prediction_runs_worker_killed_mid_run_resumes_where_it_stopped(stack):
    c = _client(stack, "globex")
    ds = c.create_dataset("globex-run")["id"]
    scenes = _three_class_scenes(10)
    ids = [c.upload_image(ds, encode_png(img)) for img, _ in scenes]
    c.put_label(ds, ids[0], (scenes[0][1] > 0).astype(np.uint8))
    run = c.start_prediction(ds, references=ids[:1])
    tenant = stack.tenants["globex"].id
    key = keys.job_state(tenant, run["run_id"], keys.PREDICTIONS)
    deadline = time.monotonic() + 240
    state = stack.store.get_json(key)
    while state["done"] < 1:
        assert time.monotonic() < deadline and state["state"] in ("QUEUED", "RUNNING"), state
        time.sleep(0.05)
        state = stack.store.get_json(key)
    os.kill(state["worker_pid"], signal.SIGKILL)  # the run's Ray task, not a replica
    done_at_kill = state["done"]
    events: list[dict] = []
    done = c.wait_for_prediction(run["run_id"], on_event=events.append, timeout=300)
    assert done_at_kill < 9, "the run ended before the kill: it proves nothing"
    assert done["state"] == "SUCCEEDED" and done["attempts"] >= 2, done
    assert done["done"] == done["total"] == 9 and done["errors"] == []
    targets = [e["image_id"] for e in events if e["phase"] == "target"]
    assert sorted(targets) == sorted(ids[1:])  # each target once across both attempts
    starts = [e["message"] for e in events if e["phase"] == "start"]
    assert starts[:2] == ["attempt 1", "attempt 2"]
