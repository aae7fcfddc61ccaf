"""The Python SDK against the gateway (real uvicorn) and against the gRPC services directly,
using the same fake services as tests/test_gateway.py."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from _gateway_harness import png_bytes, running_stack, write_model

from vplab.client import SegmentResult, VPLabAPIError, VPLabClient, VPLabGrpcClient
from vplab.storage import LocalStore

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "s3"])
def stack(request, tmp_path):
    store = (
        LocalStore(tmp_path / "store")
        if request.param == "local"
        else request.getfixturevalue("s3_store")
    )
    with running_stack(store, tmp_path) as st:
        yield st


@pytest.fixture
def local_stack(tmp_path):
    with running_stack(LocalStore(tmp_path / "store"), tmp_path) as st:
        yield st


def test_rest_client_dataset_classes_and_label_maps(local_stack):
    st = local_stack
    with VPLabClient(st.url, st.keys["alpha"], timeout=30) as vp:
        ds = vp.create_dataset("tissue", classes=["gland", {"name": "stroma", "color": "#00ff00"}])
        assert [(c["id"], c["name"], c["color"]) for c in ds["classes"]] == [
            (1, "gland", "#1f77b4"),
            (2, "stroma", "#00ff00"),
        ]
        ds = vp.update_dataset(ds["id"], classes=[{"name": "lumen"}, {"id": 1, "name": "duct"}])
        assert [c["name"] for c in ds["classes"]] == ["duct", "stroma", "lumen"]
        image = vp.upload_image(ds["id"], png_bytes(24, 32, seed=4))
        label = np.zeros((24, 32), np.uint8)
        label[1:5, 1:5], label[6:9, 6:9], label[10:20, 2:4] = 1, 2, 3
        assert vp.put_label(ds["id"], image, label) == 1
        np.testing.assert_array_equal(vp.get_label_map(ds["id"], image), label)
        label[0, 0] = 9
        with pytest.raises(VPLabAPIError) as e:
            vp.put_label(ds["id"], image, label)
        assert e.value.status == 400 and "label value 9" in str(e.value)


def test_rest_client_whole_loop(stack, tmp_path):
    st = stack
    with VPLabClient(st.url, st.keys["alpha"], timeout=30) as vp:
        ds = vp.create_dataset("wafers")
        assert vp.list_datasets() == [ds] and vp.get_dataset(ds["id"]) == ds

        path = tmp_path / "a.png"
        path.write_bytes(png_bytes(24, 32, seed=1))
        array = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
        ids = [
            vp.upload_image(ds["id"], path),
            vp.upload_image(ds["id"], png_bytes(24, 32, seed=2)),
            vp.upload_image(ds["id"], array),
        ]
        assert sorted(vp.list_images(ds["id"])) == sorted(ids)
        assert vp.get_image(ids[0]) == path.read_bytes()

        seg = vp.segment(ids[0], points=[[10, 8], [1, 1]], labels=[1, 0])
        assert isinstance(seg, SegmentResult)
        assert seg.masks.shape == (1, 24, 32) and seg.masks.dtype == bool and seg.best_mask[8, 10]
        multi = vp.segment(
            ids[0],
            points=np.array([[10.0, 8.0]]),
            multimask=True,
            box=[0, 0, 3, 3],
            mask_input=seg.best_mask,
        )
        assert multi.masks.shape == (3, 24, 32)
        assert multi.scores.tolist() == pytest.approx([0.9, 0.8, 0.7])

        results = vp.visual_prompt(ds["id"], references=[(ids[0], seg.best_mask)])
        expected = [i for i in sorted(ids) if i != ids[0]]
        assert [r.image_id for r in results] == expected
        assert results[0].mask.shape == (24, 32) and results[0].mask[:12, :16].all()
        assert results[0].points.shape == (2, 2) and results[0].point_labels.tolist() == [1, 0]
        streamed = list(
            vp.iter_visual_prompt(ds["id"], references=[(ids[0], seg.best_mask)], targets=expected)
        )
        assert sorted(r.image_id for r in streamed) == expected

        v1 = vp.put_label(ds["id"], ids[1], results[0].mask)
        v2 = vp.put_label(ds["id"], ids[1], ~results[0].mask)
        assert (v1, v2) == (1, 2)
        assert vp.list_labels(ds["id"]) == {ids[1]: 2}
        assert np.array_equal(vp.get_label(ds["id"], ids[1]), ~results[0].mask)
        assert np.array_equal(vp.get_label(ds["id"], ids[1], version=1), results[0].mask)

        job = vp.start_training(
            ds["id"], method="epeft", steps=12, method_config={"rank": 2}, lr=1e-3, seed=3
        )
        assert job["state"] == "QUEUED"
        seen = []
        final = vp.wait_for_training(job["job_id"], on_event=seen.append, timeout=30)
        assert [e["seq"] for e in seen] == [1, 2, 3, 4]
        assert final["state"] == "SUCCEEDED" and final["model_id"] == seen[-1]["model_id"]
        assert vp.get_training(job["job_id"])["state"] == "SUCCEEDED"
        assert [j["job_id"] for j in vp.list_trainings()] == [job["job_id"]]

        other = vp.start_training(ds["id"])
        assert vp.cancel_training(other["job_id"])["state"] == "CANCELLED"
        with pytest.raises(VPLabAPIError) as e:
            vp.cancel_training(other["job_id"])
        assert e.value.status == 409

        write_model(st.store, "alpha", final["model_id"], {"method": "ptsam"})
        assert vp.list_models() == [{"model_id": final["model_id"], "config": {"method": "ptsam"}}]
        out = vp.export_model(final["model_id"], tmp_path / "adapter.zip")
        with zipfile.ZipFile(out) as z:
            assert json.loads(z.read("config.json")) == {"method": "ptsam"}
        mask, score = vp.auto_segment(ids[2], final["model_id"])
        assert mask.shape == (24, 32) and mask.all() and score == pytest.approx(0.77)
        vp.delete_model(final["model_id"])
        assert vp.list_models() == []

        vp.delete_image(ds["id"], ids[2])
        vp.delete_dataset(ds["id"])
        assert vp.list_datasets() == []
        assert vp.health()["status"] == "ok"


def test_rest_client_errors(local_stack):
    st = local_stack
    with VPLabClient(st.url, "vpl_" + "x" * 43) as bad:
        with pytest.raises(VPLabAPIError) as e:
            bad.list_datasets()
        assert (e.value.status, e.value.code) == (401, "unauthenticated")
    with VPLabClient(st.url, st.keys["alpha"]) as vp, VPLabClient(st.url, st.keys["beta"]) as other:
        ds = vp.create_dataset("x")
        with pytest.raises(VPLabAPIError) as e:
            other.get_dataset(ds["id"])
        assert (e.value.status, e.value.code) == (404, "not_found")
        with pytest.raises(VPLabAPIError) as e:
            vp.upload_image(ds["id"], b"not an image")
        assert e.value.status == 400 and "not a readable image" in e.value.message
        image_id = vp.upload_image(ds["id"], png_bytes())
        with pytest.raises(VPLabAPIError) as e:
            vp.segment(image_id, points=[[1, 1]], model_id="m-toolarge")
        assert (e.value.status, e.value.code) == (413, "payload_too_large")
        with pytest.raises(VPLabAPIError) as e:
            list(
                vp.iter_visual_prompt(
                    ds["id"], references=[(image_id, np.ones((24, 32)))], targets=["0" * 64]
                )
            )
        assert e.value.status == 404
        with pytest.raises(VPLabAPIError) as e:
            vp.wait_for_training("j-nosuch")
        assert e.value.status == 404
    with VPLabClient("http://127.0.0.1:1", st.keys["alpha"], timeout=2) as down:
        with pytest.raises(VPLabAPIError) as e:
            down.list_datasets()
        assert e.value.status == 503


def test_grpc_client(local_stack):
    st = local_stack
    with VPLabClient(st.url, st.keys["alpha"]) as vp:
        ds = vp.create_dataset("g")
        ids = [vp.upload_image(ds["id"], png_bytes(24, 32, seed=i)) for i in range(3)]
    write_model(st.store, "alpha", "m-tuned")
    target = st.settings.grpc_target
    with VPLabGrpcClient(target, st.keys["alpha"], timeout=10) as g:
        seg = g.segment(ids[0], points=[[10, 8]], model_id="m-tuned")
        assert seg.masks.shape == (1, 24, 32) and seg.best_mask[8, 10]
        md = st.calls("SegmentPrompt")[-1]
        assert md["application"] == "segmentation" and md["multiplexed_model_id"] == "m-tuned"
        assert md["authorization"] == f"Bearer {st.keys['alpha']}"

        results = list(g.visual_prompt(ds["id"], [(ids[0], seg.best_mask)], targets=ids[1:]))
        assert sorted(r.index for r in results) == [0, 1]
        assert {r.image_id for r in results} == set(ids[1:])

        mask, score = g.auto_segment(ids[1], "m-tuned")
        assert mask.all() and score == pytest.approx(0.77)

        job = g.start_training(ds["id"], method="lora", steps=3, method_config={"r": 4})
        events = []
        final = g.wait_for_training(job["job_id"], on_event=events.append)
        assert final["state"] == "SUCCEEDED" and [e["seq"] for e in events] == [1, 2, 3, 4]
        assert [j["job_id"] for j in g.list_trainings(state="SUCCEEDED")] == [job["job_id"]]
        assert st.calls("StartTraining")[-1]["application"] == "training"
        j2 = g.start_training(ds["id"])
        assert g.cancel_training(j2["job_id"])["state"] == "CANCELLED"

        for model_id, status in (
            ("m-toolarge", 413),
            ("m-quota", 429),
            ("m-unavailable", 503),
            ("m-nosuch", 404),
        ):
            with pytest.raises(VPLabAPIError) as e:
                g.segment(ids[0], points=[[1, 1]], model_id=model_id)
            assert e.value.status == status, model_id
        with pytest.raises(VPLabAPIError) as e:
            g.get_training("j-nosuch")
        assert (e.value.status, e.value.grpc_code) == (404, "NOT_FOUND")
    with VPLabGrpcClient(target, st.keys["beta"]) as g:
        with pytest.raises(VPLabAPIError) as e:
            g.segment(ids[0], points=[[1, 1]])
        assert e.value.status == 404  # another tenant's image
    with VPLabGrpcClient(target, "vpl_" + "y" * 43) as g:
        with pytest.raises(VPLabAPIError) as e:
            g.get_training("j-1")
        assert e.value.status == 401
