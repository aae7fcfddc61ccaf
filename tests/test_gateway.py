"""The REST gateway under a real uvicorn server, with a LocalStore and with S3 (moto), in
front of a deterministic fake of the gRPC services (tests/_gateway_harness.py).

This isolates the gateway's own logic: authentication, tenant scoping, validation and
limits, metadata forwarding, gRPC status -> HTTP mapping, SSE and stream collection.
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import grpc
import httpx
import numpy as np
import pytest
from _fuzz import OPERATIONS
from _gateway_harness import bomb_png, mask_png, png_bytes, running_stack, write_model
from PIL import Image

from vplab.masks import decode_rle, encode_label_map, encode_rle
from vplab.storage import LocalStore

pytestmark = pytest.mark.integration

UNKNOWN_SHA = "0" * 64


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


def client(st, tenant: str | None = "alpha") -> httpx.Client:
    headers = st.headers(tenant) if tenant else {}
    return httpx.Client(base_url=st.url, headers=headers, timeout=30)


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"code", "message"} and err["message"]
    if code:
        assert err["code"] == code
    return err


def setup_data(c: httpx.Client, n_images: int = 3, size=(24, 32)):
    ds = c.post("/v1/datasets", json={"name": "cells"}).json()["id"]
    ids = []
    for i in range(n_images):
        r = c.post(
            f"/v1/datasets/{ds}/images",
            files={"file": (f"{i}.png", png_bytes(*size, seed=i), "image/png")},
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["image_id"])
    return ds, ids


def rle_of(mask) -> dict:
    return encode_rle(np.asarray(mask))


# --- datasets, images, labels ---------------------------------------------------------------


def test_dataset_classes_create_patch_and_label_values(local_stack):
    st = local_stack
    with client(st) as c, client(st, "beta") as b:
        r = c.post(
            "/v1/datasets",
            json={
                "name": "tissue",
                "classes": [{"name": "gland"}, {"name": "stroma", "color": "#00ff00"}],
            },
        )
        assert r.status_code == 201, r.text
        ds = r.json()
        assert ds["classes"] == [
            {"id": 1, "name": "gland", "color": "#1f77b4"},
            {"id": 2, "name": "stroma", "color": "#00ff00"},
        ]
        r = c.patch(
            f"/v1/datasets/{ds['id']}",
            json={"name": "tissue 2", "classes": [{"id": 1, "name": "duct"}, {"name": "lumen"}]},
        )
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["name"] == "tissue 2"
        assert [(k["id"], k["name"]) for k in got["classes"]] == [
            (1, "duct"),
            (2, "stroma"),
            (3, "lumen"),
        ]
        assert c.get(f"/v1/datasets/{ds['id']}").json() == got
        for bad, status in (
            ({"classes": [{"id": 7, "name": "x"}]}, 404),  # no class 7
            ({"classes": [{"name": "stroma"}]}, 409),  # a name in use
            ({"classes": [{"color": "#123456"}]}, 400),  # an append needs a name
            ({"classes": [{"name": "x", "color": "green"}]}, 400),
            ({"colour": "#123456"}, 400),  # unknown field
        ):
            assert_error(c.patch(f"/v1/datasets/{ds['id']}", json=bad), status)
        assert_error(c.post("/v1/datasets", json={"name": "x", "classes": []}), 400)
        dup = {"name": "x", "classes": [{"name": "a"}, {"name": "a"}]}
        assert_error(c.post("/v1/datasets", json=dup), 409)
        assert c.get(f"/v1/datasets/{ds['id']}").json() == got  # nothing changed
        assert_error(b.patch(f"/v1/datasets/{ds['id']}", json={"name": "mine"}), 404)

        image = c.post(
            f"/v1/datasets/{ds['id']}/images", files={"file": ("a.png", png_bytes(24, 32, seed=3))}
        ).json()["image_id"]
        label = np.zeros((24, 32), np.uint8)
        label[2:6, 2:6], label[8:12, 8:12], label[14:18, 3:9] = 1, 2, 3
        url = f"/v1/datasets/{ds['id']}/labels/{image}"
        ok = c.put(url, content=encode_label_map(label), headers={"Content-Type": "image/png"})
        assert ok.status_code == 200, ok.text
        label[0, 0] = 4
        err = assert_error(
            c.put(url, content=encode_label_map(label), headers={"Content-Type": "image/png"}), 400
        )
        assert "label value 4" in err["message"]
        assert c.get(f"/v1/datasets/{ds['id']}/labels").json() == {image: 1}


def test_dataset_image_label_flow(stack):
    with client(stack) as c:
        r = c.post("/v1/datasets", json={"name": "cells"})
        assert r.status_code == 201
        ds = r.json()
        assert (
            set(ds) == {"id", "name", "created_at", "classes", "channels"} and ds["name"] == "cells"
        )
        assert ds["channels"] is None  # the default TIFF rule
        assert ds["classes"] == [{"id": 1, "name": "object", "color": "#1f77b4"}]
        assert c.get("/v1/datasets").json() == {"datasets": [ds]}
        assert c.get(f"/v1/datasets/{ds['id']}").json() == ds

        data = png_bytes(24, 32, seed=1)
        r = c.post(f"/v1/datasets/{ds['id']}/images", files={"file": ("a.png", data, "image/png")})
        assert r.status_code == 201
        import hashlib

        image_id = r.json()["image_id"]
        assert image_id == hashlib.sha256(data).hexdigest()
        # Idempotent re-upload.
        assert (
            c.post(f"/v1/datasets/{ds['id']}/images", files={"file": ("a.png", data)}).json()[
                "image_id"
            ]
            == image_id
        )
        other = c.post(
            f"/v1/datasets/{ds['id']}/images", files={"file": ("b.png", png_bytes(seed=2))}
        ).json()
        listed = c.get(f"/v1/datasets/{ds['id']}/images").json()
        assert listed["images"] == sorted([image_id, other["image_id"]])
        assert [d["image_id"] for d in listed["details"]] == listed["images"]
        assert all(d["label_version"] is None for d in listed["details"])

        r = c.get(f"/v1/images/{image_id}")
        assert (
            r.status_code == 200 and r.content == data and r.headers["content-type"] == "image/png"
        )

        mask = np.zeros((24, 32), bool)
        mask[3:9, 4:12] = True
        r = c.put(
            f"/v1/datasets/{ds['id']}/labels/{image_id}",
            content=mask_png(mask),
            headers={"Content-Type": "image/png"},
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"image_id": image_id, "version": 1}
        mask2 = ~mask
        r = c.put(
            f"/v1/datasets/{ds['id']}/labels/{image_id}",
            files={"file": ("m.png", mask_png(mask2), "image/png")},
        )
        assert r.json()["version"] == 2
        assert c.get(f"/v1/datasets/{ds['id']}/labels").json() == {image_id: 2}
        r = c.get(f"/v1/datasets/{ds['id']}/labels/{image_id}")
        assert r.headers["content-type"] == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))) > 0, mask2)
        r = c.get(f"/v1/datasets/{ds['id']}/labels/{image_id}", params={"version": 1})
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))) > 0, mask)
        assert_error(
            c.get(f"/v1/datasets/{ds['id']}/labels/{image_id}", params={"version": 3}), 404
        )
        assert_error(c.get(f"/v1/datasets/{ds['id']}/labels/{other['image_id']}"), 404)
        assert_error(
            c.get(f"/v1/datasets/{ds['id']}/labels/{image_id}", params={"version": 0}), 400
        )

        assert c.delete(f"/v1/datasets/{ds['id']}/images/{image_id}").status_code == 204
        assert c.get(f"/v1/datasets/{ds['id']}/images").json()["images"] == [other["image_id"]]
        assert_error(c.get(f"/v1/images/{image_id}"), 404)  # no dataset uses it any more
        assert_error(c.delete(f"/v1/datasets/{ds['id']}/images/{image_id}"), 404)
        assert c.delete(f"/v1/datasets/{ds['id']}").status_code == 204
        assert_error(c.get(f"/v1/datasets/{ds['id']}"), 404, "not_found")
        assert c.get("/v1/datasets").json() == {"datasets": []}


# --- authentication -----------------------------------------------------------------------


def contract_routes(app) -> list[tuple[str, str]]:
    fill = {
        "dataset_id": "d-000000000000",
        "image_id": UNKNOWN_SHA,
        "job_id": "j-000000000000",
        "model_id": "m-000000000000",
        "run_id": "p-000000000000",
        "evaluation_id": "e-000000000000",
    }
    from services.gateway.errors import app_routes

    out = []
    for route in app_routes(app):
        path = getattr(route, "path", "")
        if not path.startswith("/v1/"):
            continue
        for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
            out.append((method, re.sub(r"\{(\w+)\}", lambda m: fill[m.group(1)], path)))
    return out


def test_every_v1_route_requires_a_valid_key(local_stack):
    st = local_stack
    routes = contract_routes(st.app)
    assert len(routes) == OPERATIONS - 2  # every operation but /healthz and /metrics
    bad = [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer not-a-key", "Bearer vpl_" + "A" * 43]
    with httpx.Client(base_url=st.url, timeout=30) as c:
        for method, path in routes:
            for header in bad:
                headers = {"Authorization": header} if header else {}
                r = c.request(method, path, headers=headers, json={})
                err = assert_error(r, 401, "unauthenticated")
                assert "vpl_" + "A" * 43 not in err["message"]
                assert r.headers.get("www-authenticate") == "Bearer"
    assert st.fake.calls == []  # rejected at the gateway, before any RPC


# --- cross-tenant isolation -----------------------------------------------------------------


def test_other_tenants_objects_are_not_found(stack):
    st = stack
    with client(st, "alpha") as a, client(st, "beta") as b:
        ds, ids = setup_data(a, 2)
        mask = np.zeros((24, 32), bool)
        mask[2:6, 2:6] = True
        assert (
            a.put(
                f"/v1/datasets/{ds}/labels/{ids[0]}",
                content=mask_png(mask),
                headers={"Content-Type": "image/png"},
            ).status_code
            == 200
        )
        job = a.post(
            "/v1/trainings", json={"dataset_id": ds, "method": "epeft", "steps": 5}
        ).json()["job_id"]
        write_model(st.store, "alpha", "m-alpha1")
        before = st.store.list("")

        rle = rle_of(mask)
        probes = [
            ("GET", f"/v1/datasets/{ds}", None),
            ("DELETE", f"/v1/datasets/{ds}", None),
            ("POST", f"/v1/datasets/{ds}/images", "file"),
            ("GET", f"/v1/datasets/{ds}/images", None),
            ("DELETE", f"/v1/datasets/{ds}/images/{ids[0]}", None),
            ("GET", f"/v1/images/{ids[0]}", None),
            ("PUT", f"/v1/datasets/{ds}/labels/{ids[0]}", "label"),
            ("GET", f"/v1/datasets/{ds}/labels", None),
            ("GET", f"/v1/datasets/{ds}/labels/{ids[0]}", None),
            ("POST", f"/v1/images/{ids[0]}/segment", {"points": [[3, 3]], "labels": [1]}),
            (
                "POST",
                f"/v1/datasets/{ds}/visual-prompt",
                {"references": [{"image_id": ids[0], "mask_rle": rle}]},
            ),
            ("POST", f"/v1/images/{ids[0]}/auto-segment", {"model_id": "m-alpha1"}),
            ("POST", "/v1/trainings", {"dataset_id": ds, "method": "epeft"}),
            ("GET", f"/v1/trainings/{job}", None),
            ("GET", f"/v1/trainings/{job}/events", None),
            ("DELETE", f"/v1/trainings/{job}", None),
            ("GET", "/v1/models/m-alpha1", None),
            ("GET", "/v1/models/m-alpha1/export", None),
            ("DELETE", "/v1/models/m-alpha1", None),
            (
                "POST",
                f"/v1/images/{ids[0]}/segment",
                {"points": [[3, 3]], "labels": [1], "model_id": "m-alpha1"},
            ),
        ]
        for method, path, body in probes:
            kwargs = {}
            if body == "file":
                kwargs["files"] = {"file": ("x.png", png_bytes(seed=9))}
            elif body == "label":
                kwargs = {"content": mask_png(mask), "headers": {"Content-Type": "image/png"}}
            elif body is not None:
                kwargs["json"] = body
            assert_error(b.request(method, path, **kwargs), 404, "not_found")
        assert st.store.list("") == before
        # Beta sees nothing of alpha in its listings.
        assert b.get("/v1/datasets").json() == {"datasets": []}
        assert b.get("/v1/trainings").json() == {"jobs": []}
        assert b.get("/v1/models").json() == {"models": []}
        # And alpha still has everything.
        assert a.get(f"/v1/datasets/{ds}/labels").json() == {ids[0]: 1}
        assert a.get(f"/v1/trainings/{job}").json()["state"] == "QUEUED"


# --- bad input: 4xx, JSON, nothing written -------------------------------------------------------


def test_bad_inputs_are_4xx_and_write_nothing(stack):
    st = stack
    with client(st) as c:
        ds, ids = setup_data(c, 2)
        ds2 = c.post("/v1/datasets", json={"name": "other"}).json()["id"]
        good = png_bytes(seed=7)
        before = st.store.list("")

        def up(data, dataset=ds):
            return c.post(
                f"/v1/datasets/{dataset}/images", files={"file": ("x.png", data, "image/png")}
            )

        assert_error(up(b"this is not an image"), 400, "invalid_argument")
        assert_error(up(good[: len(good) // 2]), 400)  # truncated
        assert_error(up(b""), 400)
        assert_error(up(bomb_png()), 413, "payload_too_large")
        assert_error(up(good, dataset="d-doesnotexist"), 404)
        assert_error(up(good, dataset="../etc"), 404)  # a path segment cannot even reach the route
        assert_error(up(good, dataset="Bad_Id!"), 400)
        assert_error(c.post(f"/v1/datasets/{ds}/images", data={"notfile": "x"}), 400)
        assert_error(c.post("/v1/datasets", json={"name": ""}), 400)
        assert_error(c.post("/v1/datasets", json={"nom": "x"}), 400)
        assert_error(
            c.post(
                "/v1/datasets", content=b"{not json", headers={"Content-Type": "application/json"}
            ),
            400,
        )

        # Labels: not a PNG, a colour image, wrong size, not in the dataset, bad content type.
        lab = f"/v1/datasets/{ds}/labels/{ids[0]}"
        png = {"Content-Type": "image/png"}
        assert_error(c.put(lab, content=b"junk", headers=png), 400)
        assert_error(c.put(lab, content=png_bytes(24, 32, seed=3), headers=png), 400)
        assert_error(c.put(lab, content=mask_png(np.ones((10, 10), bool)), headers=png), 400)
        assert_error(c.put(lab, content=b"", headers=png), 400)
        assert_error(
            c.put(
                f"/v1/datasets/{ds2}/labels/{ids[0]}",
                content=mask_png(np.ones((24, 32))),
                headers=png,
            ),
            404,
        )
        assert_error(c.put(lab, content=b"{}", headers={"Content-Type": "application/json"}), 415)
        assert_error(c.put(lab, content=bomb_png(), headers=png), 413)

        # Prompts: malformed RLE, point/label mismatches, out-of-limit counts, unknown ids.
        seg = f"/v1/images/{ids[0]}/segment"
        for body in (
            {"points": [[1, 2, 3]], "labels": [1]},
            {"points": [[1, 2]], "labels": [2]},
            {"points": [[1, 2]], "labels": [1, 0]},
            {"points": [["nan", 2]], "labels": [1]},
            {"points": [[1, "x"]], "labels": [1]},
            {"points": [], "labels": []},
            {"box": [10, 10, 5, 5]},
            {
                "points": [[1, 2]],
                "labels": [1],
                "mask_input_rle": {"size": [24, 32], "counts": "zz"},
            },
            {
                "points": [[1, 2]],
                "labels": [1],
                "mask_input_rle": {"size": [24, 32], "counts": "0"},
            },
            {
                "points": [[1, 2]],
                "labels": [1],
                "mask_input_rle": {"size": [-1, 32], "counts": "0"},
            },
            {"points": [[1, 2]], "labels": [1], "mask_input_rle": {"counts": "0"}},
            {"points": [[1, 2]], "labels": [1], "model_id": "../m"},
            {"points": [[1, 2]], "labels": [1], "unexpected": True},
        ):
            assert_error(c.post(seg, json=body), 400)
        assert_error(
            c.post(
                seg,
                json={
                    "points": [[1, 1]] * (st.settings.max_points_per_request + 1),
                    "labels": [1] * (st.settings.max_points_per_request + 1),
                },
            ),
            413,
        )
        assert_error(
            c.post(seg, json={"points": [[1000, 1]], "labels": [1]}), 400
        )  # service: outside the image
        assert_error(
            c.post(f"/v1/images/{UNKNOWN_SHA}/segment", json={"points": [[1, 1]], "labels": [1]}),
            404,
        )
        assert_error(
            c.post("/v1/images/not-a-sha/segment", json={"points": [[1, 1]], "labels": [1]}), 400
        )
        assert_error(
            c.post(
                f"/v1/images/{ids[0]}/segment",
                json={"points": [[1, 1]], "labels": [1], "model_id": "m-nosuchmodel"},
            ),
            404,
        )

        vp = f"/v1/datasets/{ds}/visual-prompt"
        good_rle = rle_of(np.ones((24, 32), bool))
        for body in (
            {"references": []},
            {"references": [{"image_id": ids[0], "mask_rle": {"size": [24, 32], "counts": "!!"}}]},
            {"references": [{"image_id": ids[0], "mask_rle": good_rle}], "matcher": "magic"},
            {"references": [{"image_id": ids[0], "mask_rle": good_rle}], "targets": ["nope"]},
            {"references": [{"image_id": "x", "mask_rle": good_rle}]},
            {"references": [{"image_id": ids[0], "mask_rle": good_rle}], "seed": -1},
        ):
            assert_error(c.post(vp, json=body), 400)
        assert_error(
            c.post(
                vp,
                json={
                    "references": [{"image_id": ids[0], "mask_rle": good_rle}],
                    "targets": [UNKNOWN_SHA],
                },
            ),
            404,
        )
        assert_error(
            c.post(
                f"/v1/datasets/{ds2}/visual-prompt",
                json={"references": [{"image_id": ids[0], "mask_rle": good_rle}]},
            ),
            404,
        )
        # Reference mask of the wrong size: rejected by the service as INVALID_ARGUMENT.
        assert_error(
            c.post(
                vp, json={"references": [{"image_id": ids[0], "mask_rle": rle_of(np.ones((5, 5)))}]}
            ),
            400,
        )

        assert_error(c.post(f"/v1/images/{ids[0]}/auto-segment", json={}), 400)
        assert_error(
            c.post(f"/v1/images/{ids[0]}/auto-segment", json={"model_id": "m-nosuchmodel"}), 404
        )
        for body in (
            {"dataset_id": ds, "steps": -1},
            {"dataset_id": ds, "lr": -1.0},
            {"dataset_id": "Bad!"},
            {"dataset_id": ds, "method": "nosuchmethod"},
            {"dataset_id": ds, "method_config": [1]},
            {"dataset_id": ds, "recipe": "Not A Recipe!"},
        ):
            assert_error(c.post("/v1/trainings", json=body), 400)
        assert_error(
            c.post("/v1/trainings", json={"dataset_id": "d-unknown", "method": "epeft"}), 404
        )
        assert_error(c.get("/v1/trainings/j-unknown"), 404)
        assert_error(c.get("/v1/trainings/j-unknown/events"), 404)
        assert_error(c.get("/v1/trainings/BAD!"), 400)
        assert_error(c.get("/v1/trainings", params={"state": "SLEEPING"}), 400)
        assert_error(c.get("/v1/trainings/j-x/events", headers={"Last-Event-ID": "abc"}), 400)
        assert_error(c.get("/v1/models/m-unknown"), 404)
        assert_error(c.get("/v1/models/BAD!/export"), 400)
        assert_error(c.get("/v1/nope"), 404)
        assert_error(c.patch(f"/v1/datasets/{ds}"), 400)  # no body
        assert_error(c.patch(f"/v1/images/{ids[0]}", json={}), 405)
        assert st.store.list("") == before


# --- quotas and limits --------------------------------------------------------------------


def test_quotas_and_limits(tmp_path):
    store = LocalStore(tmp_path / "store")
    limits = dict(
        quota_images=2,
        max_image_bytes=20_000,
        max_targets_per_call=2,
        quota_concurrent_jobs=1,
        max_points_per_request=3,
    )
    with running_stack(store, tmp_path, **limits) as st, client(st) as c, client(st, "beta") as b:
        ds, ids = setup_data(c, 2)
        before = st.store.list("")
        r = c.post(f"/v1/datasets/{ds}/images", files={"file": ("c.png", png_bytes(seed=5))})
        assert_error(r, 429, "quota_exceeded")
        # Re-uploading a stored image is no new image: allowed.
        assert (
            c.post(
                f"/v1/datasets/{ds}/images", files={"file": ("a.png", png_bytes(seed=0))}
            ).status_code
            == 201
        )
        big = png_bytes(100, 100, seed=1)  # ~30 kB of noise
        assert len(big) > 20_000
        assert_error(c.post(f"/v1/datasets/{ds}/images", files={"file": ("big.png", big)}), 413)
        # A body over the limit is refused before it is read (Content-Length).
        assert_error(
            c.post(
                f"/v1/datasets/{ds}/images",
                content=b"x" * (20_000 + 1024 * 1024 + 1),
                headers={"Content-Type": "application/octet-stream"},
            ),
            413,
        )

        # ...and when streamed without a Content-Length too.
        def chunks():
            for _ in range(40):
                yield b"y" * 65536

        assert_error(
            c.put(
                f"/v1/datasets/{ds}/labels/{ids[0]}",
                content=chunks(),
                headers={"Content-Type": "image/png"},
            ),
            413,
        )
        assert_error(
            c.post(
                f"/v1/images/{ids[0]}/segment", json={"points": [[1, 1]] * 4, "labels": [1] * 4}
            ),
            413,
        )
        assert st.store.list("") == before

        # Quotas are per tenant: beta may still upload.
        ds_b, _ = setup_data(b, 1)

        # Visual prompt: more targets than allowed -> 413.
        ref = [{"image_id": ids[0], "mask_rle": rle_of(np.ones((24, 32)))}]
        assert_error(
            c.post(
                f"/v1/datasets/{ds}/visual-prompt",
                json={"references": ref, "targets": [ids[1]] * 3},
            ),
            413,
        )

        # Concurrent jobs: the service's RESOURCE_EXHAUSTED + trailer 429.
        assert c.post("/v1/trainings", json={"dataset_id": ds}).status_code == 201
        assert_error(c.post("/v1/trainings", json={"dataset_id": ds}), 429, "quota_exceeded")
        assert b.post("/v1/trainings", json={"dataset_id": ds_b}).status_code == 201


# --- segmentation over gRPC ---------------------------------------------------------------


def test_segment_forwards_metadata_and_formats(local_stack):
    st = local_stack
    with client(st) as c:
        _ds, ids = setup_data(c, 1)
        r = c.post(
            f"/v1/images/{ids[0]}/segment", json={"points": [[10, 8], [0, 0]], "labels": [1, 0]}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["height"] == 24 and body["width"] == 32 and len(body["masks"]) == 1
        mask = decode_rle(body["masks"][0]["rle"])
        assert mask[8, 10] and not mask[0, 0] and mask.sum() == 25
        md = st.calls("SegmentPrompt")[-1]
        assert md["application"] == "segmentation"
        assert md["authorization"] == st.headers("alpha")["Authorization"]
        assert "multiplexed_model_id" not in md

        write_model(st.store, "alpha", "m-tuned")
        r = c.post(
            f"/v1/images/{ids[0]}/segment",
            json={
                "box": [2, 3, 5, 6],
                "multimask": True,
                "model_id": "m-tuned",
                "mask_input_rle": rle_of(np.eye(24, 32)),
            },
        )
        assert r.status_code == 200, r.text
        assert [m["score"] for m in r.json()["masks"]] == [0.9, 0.8, 0.7]
        assert st.calls("SegmentPrompt")[-1]["multiplexed_model_id"] == "m-tuned"

        r = c.post(
            f"/v1/images/{ids[0]}/segment",
            params={"format": "png"},
            json={"points": [[10, 8]], "labels": [1], "multimask": True},
        )
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        png = np.asarray(Image.open(io.BytesIO(r.content)))
        assert png.shape == (24, 32) and (png > 0).sum() == 25  # the best mask (0.9)
        assert_error(
            c.post(
                f"/v1/images/{ids[0]}/segment",
                params={"format": "gif"},
                json={"points": [[1, 1]], "labels": [1]},
            ),
            400,
        )


@pytest.mark.parametrize(
    "model_id,status,code",
    [
        ("m-unavailable", 503, "unavailable"),
        ("m-internal", 502, "bad_gateway"),
        ("m-replica-lost", 503, "unavailable"),  # its node died: retry once Serve replaced it
        ("m-slow", 504, "deadline_exceeded"),
        ("m-toolarge", 413, "payload_too_large"),
        ("m-quota", 429, "quota_exceeded"),
        ("m-exhausted", 429, "quota_exceeded"),
        ("m-shed", 429, "overloaded"),  # Serve's back-pressure: shed, not our quota
        ("m-conflict", 409, "conflict"),
    ],
)
def test_grpc_status_mapping(local_stack, model_id, status, code):
    st = local_stack
    with client(st) as c:
        _, ids = setup_data(c, 1)
        err = assert_error(
            c.post(
                f"/v1/images/{ids[0]}/segment",
                json={"points": [[1, 1]], "labels": [1], "model_id": model_id},
            ),
            status,
            code,
        )
        # Internals (addresses, tracebacks) never reach the caller.
        assert "10.0.0.7" not in err["message"] and "Traceback" not in err["message"]
        # Shed or unavailable: come back later, and say when.
        r = c.post(
            f"/v1/images/{ids[0]}/segment",
            json={"points": [[1, 1]], "labels": [1], "model_id": model_id},
        )
        assert (r.headers.get("retry-after") == "1") == (code in ("overloaded", "unavailable"))


def test_visual_prompt_collects_and_streams(stack):
    st = stack
    with client(st) as c:
        ds, ids = setup_data(c, 4)
        ref = [{"image_id": ids[0], "mask_rle": rle_of(np.ones((24, 32)))}]
        r = c.post(
            f"/v1/datasets/{ds}/visual-prompt",
            json={"references": ref, "matcher": "prototype", "seed": 3},
        )
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        # Default targets: every image of the dataset but the reference (dataset order: sorted ids).
        assert [x["image_id"] for x in results] == [i for i in sorted(ids) if i != ids[0]]
        assert [x["index"] for x in results] == [0, 1, 2]  # sorted although streamed in reverse
        assert results[0]["points"] == [[1.5, 2.5], [0.0, 0.0]] and results[0]["point_labels"] == [
            1,
            0,
        ]
        m = decode_rle(results[1]["mask_rle"])
        assert m.shape == (24, 32) and m[:12, :16].all() and m.sum() == 12 * 16
        assert results[2]["score"] == pytest.approx(0.52)
        md = st.calls("VisualPrompt")[-1]
        assert md["application"] == "segmentation" and md["authorization"].startswith("Bearer vpl_")

        # SSE: one event per target as it arrives, then "end".
        with c.stream(
            "POST",
            f"/v1/datasets/{ds}/visual-prompt",
            headers={"Accept": "text/event-stream"},
            json={"references": ref, "targets": [ids[2], ids[3]]},
        ) as s:
            assert s.status_code == 200 and s.headers["content-type"].startswith(
                "text/event-stream"
            )
            events = parse_sse(s.iter_lines())
        assert [e["event"] for e in events] == ["result", "result", "end"]
        assert [e["data"]["image_id"] for e in events[:2]] == [ids[3], ids[2]]
        assert events[2]["data"] == {"count": 2, "total": 2}

        # Errors before the first result keep their HTTP status in SSE mode.
        write_model(st.store, "alpha", "m-x")
        r = c.post(
            f"/v1/datasets/{ds}/visual-prompt",
            headers={"Accept": "text/event-stream"},
            json={"references": ref, "model_id": "m-nosuch"},
        )
        assert_error(r, 404)
        # A failure after results started: an SSE "error" event; in JSON mode a 502.
        with c.stream(
            "POST",
            f"/v1/datasets/{ds}/visual-prompt",
            headers={"Accept": "text/event-stream"},
            json={"references": ref, "model_id": "m-midfail"},
        ) as s:
            events = parse_sse(s.iter_lines())
        assert [e["event"] for e in events] == ["result", "error"]
        assert events[1]["data"] == {
            "status": 502,
            "error": {"code": "bad_gateway", "message": "the service failed to handle the request"},
        }
        assert st.calls("VisualPrompt")[-1]["multiplexed_model_id"] == "m-midfail"
        assert_error(
            c.post(
                f"/v1/datasets/{ds}/visual-prompt",
                json={"references": ref, "model_id": "m-midfail"},
            ),
            502,
        )
        # References must belong to the dataset (an image of another dataset is not enough).
        ds2 = c.post("/v1/datasets", json={"name": "elsewhere"}).json()["id"]
        elsewhere = c.post(
            f"/v1/datasets/{ds2}/images", files={"file": ("e.png", png_bytes(seed=42))}
        ).json()
        r = c.post(
            f"/v1/datasets/{ds}/visual-prompt",
            json={
                "references": [
                    {"image_id": elsewhere["image_id"], "mask_rle": rle_of(np.ones((24, 32)))}
                ]
            },
        )
        assert_error(r, 404)
        assert_error(
            c.post(
                f"/v1/datasets/{ds}/visual-prompt",
                json={"references": ref, "targets": [elsewhere["image_id"]]},
            ),
            404,
        )


class _RpcError(grpc.RpcError):
    def __init__(self, code, details="", trailers=()):
        self._code, self._details, self._trailers = code, details, trailers

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


@pytest.mark.parametrize(
    "code,details,trailers,status",
    [
        ("INVALID_ARGUMENT", "bad point", (), 400),
        ("UNAUTHENTICATED", "invalid API key", (), 401),
        ("NOT_FOUND", "image x not found", (), 404),
        ("NOT_FOUND", "Application 'training' not found", (), 503),
        ("NOT_FOUND", "Application metadata not set", (), 503),
        ("PERMISSION_DENIED", "nope", (), 404),
        ("FAILED_PRECONDITION", "job ended", (), 409),
        ("RESOURCE_EXHAUSTED", "whatever", (("vplab-http-status", "413"),), 413),
        ("RESOURCE_EXHAUSTED", "whatever", (("vplab-http-status", "429"),), 429),
        ("RESOURCE_EXHAUSTED", "too many points in one request: 65, the limit is 64", (), 413),
        ("RESOURCE_EXHAUSTED", "concurrent job quota exceeded", (), 429),
        ("RESOURCE_EXHAUSTED", "Received message larger than max", (), 429),
        ("UNAVAILABLE", "failed to connect to all addresses; 10.1.2.3", (), 503),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", (), 504),
        ("INTERNAL", "Traceback ...", (), 502),
        ("UNKNOWN", "Exception calling application", (), 502),
        ("UNIMPLEMENTED", "Method not found!", (), 502),
        ("CANCELLED", "", (), 502),
    ],
)
def test_status_of_rpc_error(code, details, trailers, status):
    from services.gateway.errors import status_of_rpc_error

    got, message = status_of_rpc_error(_RpcError(getattr(grpc.StatusCode, code), details, trailers))
    assert got == status
    if status >= 500:
        assert details not in message or not details  # no internals
    else:
        assert message == details


def test_auto_segment(local_stack):
    st = local_stack
    with client(st) as c:
        _, ids = setup_data(c, 1)
        write_model(st.store, "alpha", "m-ptsam")
        r = c.post(f"/v1/images/{ids[0]}/auto-segment", json={"model_id": "m-ptsam"})
        assert r.status_code == 200, r.text
        assert r.json()["score"] == 0.77 and decode_rle(r.json()["mask_rle"]).all()
        md = st.calls("AutoSegment")[-1]
        assert md["multiplexed_model_id"] == "m-ptsam" and md["application"] == "segmentation"


# --- training -------------------------------------------------------------------------------


def parse_sse(lines) -> list[dict]:
    events, cur = [], {}
    for line in lines:
        if line == "":
            if cur:
                if "data" in cur:
                    cur["data"] = json.loads(cur["data"])
                events.append(cur)
            cur = {}
        elif line.startswith(":"):
            cur.setdefault("comments", []).append(line)
        else:
            k, _, v = line.partition(": ")
            cur[k] = v
    return events


def test_training_routes_and_events(local_stack):
    st = local_stack
    with client(st) as c:
        ds, _ = setup_data(c, 1)
        r = c.post(
            "/v1/trainings",
            json={
                "dataset_id": ds,
                "method": "epeft",
                "steps": 7,
                "seed": 1,
                "lr": 1e-3,
                "method_config": {"rank": 4},
            },
        )
        assert r.status_code == 201, r.text
        job = r.json()
        assert (
            job["state"] == "QUEUED" and job["total_steps"] == 7 and job["job_id"].startswith("j-")
        )
        md = st.calls("StartTraining")[-1]
        assert md["application"] == "training" and "multiplexed_model_id" not in md
        assert c.get(f"/v1/trainings/{job['job_id']}").json() == job

        with c.stream("GET", f"/v1/trainings/{job['job_id']}/events") as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            events = parse_sse(s.iter_lines())
        assert [(e["id"], e["event"]) for e in events] == [
            ("1", "progress"),
            ("2", "progress"),
            ("3", "progress"),
            ("4", "end"),
        ]
        assert events[2]["data"]["val_iou"] == 0.625 and events[3]["data"]["state"] == "SUCCEEDED"
        model_id = events[3]["data"]["model_id"]
        done = c.get(f"/v1/trainings/{job['job_id']}").json()
        assert done["state"] == "SUCCEEDED" and done["model_id"] == model_id

        # Resume: ?after_seq= and Last-Event-ID (the header wins, as EventSource sends it).
        with c.stream("GET", f"/v1/trainings/{job['job_id']}/events", params={"after_seq": 2}) as s:
            assert [e["id"] for e in parse_sse(s.iter_lines())] == ["3", "4"]
        with c.stream(
            "GET",
            f"/v1/trainings/{job['job_id']}/events",
            params={"after_seq": 0},
            headers={"Last-Event-ID": "3"},
        ) as s:
            assert [e["id"] for e in parse_sse(s.iter_lines())] == ["4"]

        # Cancel: a queued job; a finished one is a conflict.
        j2 = c.post("/v1/trainings", json={"dataset_id": ds}).json()
        r = c.delete(f"/v1/trainings/{j2['job_id']}")
        assert r.status_code == 200 and r.json()["state"] == "CANCELLED"
        assert_error(c.delete(f"/v1/trainings/{j2['job_id']}"), 409, "conflict")
        assert_error(c.delete(f"/v1/trainings/{job['job_id']}"), 409)

        jobs = c.get("/v1/trainings").json()["jobs"]
        assert [j["job_id"] for j in jobs] == [j2["job_id"], job["job_id"]]
        assert [
            j["job_id"]
            for j in c.get("/v1/trainings", params={"state": "CANCELLED"}).json()["jobs"]
        ] == [j2["job_id"]]
        assert len(c.get("/v1/trainings", params={"limit": 1}).json()["jobs"]) == 1


def test_training_events_keepalive(local_stack):
    st = local_stack
    with client(st) as c:
        ds, _ = setup_data(c, 1)
        job = c.post("/v1/trainings", json={"dataset_id": ds, "base_model": "slow-fake"}).json()
        with c.stream("GET", f"/v1/trainings/{job['job_id']}/events") as s:
            events = parse_sse(s.iter_lines())
        # The job pauses 1 s after its first event; the gateway sends comments meanwhile.
        assert any(e.get("comments") for e in events)
        assert [e.get("id") for e in events if "id" in e] == ["1", "2", "3", "4"]


# --- models ------------------------------------------------------------------------------


def test_models(stack):
    st = stack
    write_model(st.store, "alpha", "m-one", {"method": "epeft", "rank": 4})
    write_model(st.store, "alpha", "m-two")
    with client(st) as c:
        models = c.get("/v1/models").json()["models"]
        assert [m["model_id"] for m in models] == ["m-one", "m-two"]
        assert c.get("/v1/models/m-one").json() == {
            "model_id": "m-one",
            "config": {"method": "epeft", "rank": 4},
        }
        r = c.get("/v1/models/m-one/export")
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        assert r.headers["content-disposition"] == 'attachment; filename="m-one.zip"'
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            assert sorted(z.namelist()) == ["adapter.safetensors", "config.json"]
            assert json.loads(z.read("config.json")) == {"method": "epeft", "rank": 4}
        assert c.delete("/v1/models/m-one").status_code == 204
        assert_error(c.get("/v1/models/m-one"), 404)
        assert_error(c.get("/v1/models/m-one/export"), 404)
        assert [m["model_id"] for m in c.get("/v1/models").json()["models"]] == ["m-two"]


# --- ops -----------------------------------------------------------------------------------


def test_metrics_count_requests_by_route_template(local_stack):
    st = local_stack
    with client(st) as c:
        ds, ids = setup_data(c, 2)
        c.get(f"/v1/datasets/{ds}")
        c.get("/v1/datasets/d-nope")
        with httpx.Client(base_url=st.url) as anon:
            anon.get("/v1/datasets")
        text = c.get("/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }

    def count(route, method, status):
        return samples.get(
            (
                "vplab_gateway_requests_total",
                (("method", method), ("route", route), ("status", status)),
            ),
            0,
        )

    assert count("/v1/datasets/{dataset_id}/images", "POST", "201") == 2
    assert count("/v1/datasets/{dataset_id}", "GET", "200") == 1
    assert count("/v1/datasets/{dataset_id}", "GET", "404") == 1
    assert count("/v1/datasets", "GET", "401") == 1
    assert (
        samples[
            (
                "vplab_gateway_request_duration_seconds_count",
                (("method", "POST"), ("route", "/v1/datasets/{dataset_id}/images")),
            )
        ]
        == 2
    )
    assert not any(ids[0] in name or ids[0] in str(labels) for name, labels in samples)
    # Each app has its own registry.
    from services.gateway.main import create_app

    other = create_app(st.settings, store=st.store)
    assert other.state.metrics.registry is not st.app.state.metrics.registry


def test_openapi_lists_the_contract(local_stack):
    with httpx.Client(base_url=local_stack.url) as c:
        doc = c.get("/openapi.json").json()
    expected = {
        "/v1/datasets": {"get", "post"},
        "/v1/datasets/{dataset_id}": {"get", "patch", "delete"},
        "/v1/datasets/{dataset_id}/images": {"get", "post"},
        "/v1/images/{image_id}": {"get"},
        "/v1/datasets/{dataset_id}/images/{image_id}": {"get", "delete"},
        "/v1/images/{image_id}/segment": {"post"},
        "/v1/datasets/{dataset_id}/visual-prompt": {"post"},
        "/v1/images/{image_id}/auto-segment": {"post"},
        "/v1/datasets/{dataset_id}/labels/{image_id}": {"put", "get"},
        "/v1/datasets/{dataset_id}/labels": {"get"},
        "/v1/trainings": {"get", "post"},
        "/v1/trainings/{job_id}": {"get", "delete"},
        "/v1/trainings/{job_id}/events": {"get"},
        "/v1/models": {"get"},
        "/v1/models/{model_id}": {"get", "delete"},
        "/v1/models/{model_id}/export": {"get"},
        "/v1/datasets/{dataset_id}/import": {"post"},
        "/v1/datasets/{dataset_id}/embeddings": {"post"},
        "/v1/datasets/{dataset_id}/data-jobs": {"get"},
        "/v1/data-jobs/{job_id}": {"get", "delete"},
        "/v1/data-jobs/{job_id}/events": {"get"},
        "/healthz": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert path in doc["paths"], path
        assert set(doc["paths"][path]) == methods, path
        for op in doc["paths"][path].values():
            assert op["summary"] and op["tags"]
            if path.startswith("/v1/"):
                assert op["security"] == [{"HTTPBearer": []}]
                assert "422" not in op["responses"]
    assert {t["name"] for t in doc["tags"]} >= {
        "datasets",
        "labels",
        "segmentation",
        "training",
        "models",
    }


def test_grpc_channel_factory(tmp_path):
    made = []

    def factory(target):
        made.append(target)
        return grpc.aio.insecure_channel(target)

    with (
        running_stack(
            LocalStore(tmp_path / "store"), tmp_path, app_kwargs={"grpc_channel": factory}
        ) as st,
        client(st) as c,
    ):
        _, ids = setup_data(c, 1)
        assert (
            c.post(
                f"/v1/images/{ids[0]}/segment", json={"points": [[1, 1]], "labels": [1]}
            ).status_code
            == 200
        )
    assert made == [st.settings.grpc_target]


def test_healthz(local_stack, tmp_path):
    st = local_stack
    with httpx.Client(base_url=st.url) as c:
        r = c.get("/healthz")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ok"
        assert set(r.json()["apps"]) == {"features", "segmentation", "training"}
        st.fake.deployed.discard("training")  # Serve: "Application 'training' not found"
        r = c.get("/healthz")
        assert r.status_code == 503
        body = r.json()
        assert (
            body["apps"]["training"]["status"] == "down"
            and body["apps"]["features"]["status"] == "ok"
        )
        assert body["status"] == "degraded"
    # Nothing listening on the gRPC target: every app is down.
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()
    with (
        running_stack(LocalStore(tmp_path / "store2"), tmp_path / "two", grpc_target=dead) as st2,
        httpx.Client(base_url=st2.url) as c,
    ):
        r = c.get("/healthz")
        assert r.status_code == 503
        assert all(a["status"] == "down" for a in r.json()["apps"].values())
        assert r.json()["store"]["status"] == "ok"
        # A gRPC route with the services down: 503, JSON.
        a = client(st2)
        _ds, ids = setup_data(a, 1)
        assert_error(
            a.post(f"/v1/images/{ids[0]}/segment", json={"points": [[1, 1]], "labels": [1]}),
            503,
        )
        a.close()


# --- prediction runs, review, evaluations (REST; the run's worker in-process) ---------------


def _finish_run(st, tenant: str, run_id: str, truth: dict[str, np.ndarray], folder: str = "p"):
    """What the training app's task does, with a predictor that answers a fixed mask."""
    from vplab import predictions as P
    from vplab.datasets import DatasetStore

    def predict(run, image_id):
        labels = truth[image_id]
        classes = {
            str(c): {"mask": encode_rle(labels == c), "score": 0.5 + 0.1 * c, "points": [[1, 2, 1]]}
            for c in run.classes
        }
        score = float(int(image_id[:2], 16)) / 255  # a different uncertainty per image
        return {"height": labels.shape[0], "width": labels.shape[1], "classes": classes,
                "score": score, "disagreement": 0.0, "uncertainty": 1 - score}  # fmt: skip

    runs = P.evaluations(st.store) if folder == "e" else P.prediction_runs(st.store)
    datasets = DatasetStore(st.store, st.settings)
    return P.run_prediction(st.store, datasets, tenant, run_id, predict, runs=runs)


def test_prediction_runs_results_and_review_over_rest(local_stack):
    st = local_stack
    with client(st, "alpha") as a, client(st, "beta") as b:
        ds, ids = setup_data(a, 4)
        truth = {}
        for i, image_id in enumerate(ids):
            labels = np.zeros((24, 32), np.uint8)
            labels[2 + i : 10 + i, 3:12] = 1
            truth[image_id] = labels
        assert_error(
            a.post(f"/v1/datasets/{ds}/predictions", json={"references": [{"image_id": ids[0]}]}),
            400,
        )
        put = a.put(f"/v1/datasets/{ds}/labels/{ids[0]}", content=encode_label_map(truth[ids[0]]),
                    headers={"Content-Type": "image/png"})  # fmt: skip
        assert put.status_code == 200, put.text
        bad = {"references": [{"image_id": ids[0], "class_id": 1}]}  # no mask_rle
        assert_error(a.post(f"/v1/datasets/{ds}/predictions", json=bad), 400)
        r = a.post(f"/v1/datasets/{ds}/predictions", json={"references": [{"image_id": ids[0]}]})
        assert r.status_code == 201, r.text
        run = r.json()
        assert run["state"] == "QUEUED" and run["total"] == 3
        assert run["references"] == [
            {"image_id": ids[0], "class_id": None, "mask_rle": None, "label_version": 1}
        ]
        assert _finish_run(st, "alpha", run["run_id"], truth) == "SUCCEEDED"
        got = a.get(f"/v1/predictions/{run['run_id']}").json()
        assert (got["state"], got["done"], got["errors"]) == ("SUCCEEDED", 3, [])
        listed = a.get(f"/v1/datasets/{ds}/predictions").json()["runs"]
        assert [x["run_id"] for x in listed] == [run["run_id"]]
        events = a.get(f"/v1/predictions/{run['run_id']}/events").text
        assert events.count("event: target") == 3 and "event: end" in events

        pages, after = [], None
        while True:
            params = {"order": "uncertainty", "limit": 2, **({"after": after} if after else {})}
            page = a.get(f"/v1/predictions/{run['run_id']}/results", params=params).json()
            pages += page["results"]
            after = page["next"]
            if after is None:
                break
        u = [x["uncertainty"] for x in pages]
        assert len(pages) == 3 and u == sorted(u, reverse=True)
        assert pages[0]["points"] == {"1": [[1.0, 2.0, 1]]}
        assert_error(a.get(f"/v1/predictions/{run['run_id']}/results", params={"after": "x"}), 400)
        one = a.get(f"/v1/predictions/{run['run_id']}/results/{ids[1]}").json()
        assert np.array_equal(decode_rle(one["classes"]["1"]["mask_rle"]), truth[ids[1]] == 1)
        png = a.get(f"/v1/predictions/{run['run_id']}/results/{ids[1]}", params={"format": "png"})
        assert png.headers["content-type"] == "image/png"

        accept = a.post(f"/v1/predictions/{run['run_id']}/results/{ids[1]}/accept")
        assert accept.status_code == 200 and accept.json()["verdict"] == "accepted", accept.text
        edited = truth[ids[2]].copy()
        edited[0, 0] = 1
        r = a.post(f"/v1/predictions/{run['run_id']}/results/{ids[2]}/accept",
                   content=encode_label_map(edited), headers={"Content-Type": "image/png"})  # fmt: skip
        assert r.json()["verdict"] == "edited" and r.json()["label_version"] == 1
        before = st.store.list("")
        wrong = np.full((24, 32), 5, np.uint8)  # two classes on a 1-class dataset
        wrong[0, 0] = 1
        assert_error(a.post(f"/v1/predictions/{run['run_id']}/results/{ids[3]}/accept",
                            content=encode_label_map(wrong), headers={"Content-Type": "image/png"}), 400)  # fmt: skip
        assert_error(a.post(f"/v1/predictions/{run['run_id']}/results/{ids[1]}/reject"), 409)
        assert st.store.list("") == before
        assert (
            a.post(f"/v1/predictions/{run['run_id']}/results/{ids[3]}/reject").json()["verdict"]
            == "rejected"
        )
        details = {d["image_id"]: d for d in a.get(f"/v1/datasets/{ds}/images").json()["details"]}
        assert details[ids[1]]["provenance"]["source"] == "accepted"
        assert details[ids[2]]["provenance"] == {
            "source": "edited",
            "run_id": run["run_id"],
            "model_id": "",
        }
        assert details[ids[3]]["prediction"]["review"] == "rejected"

        r = a.post("/v1/evaluations", json={"dataset_id": ds, "references": [{"image_id": ids[0]}]})
        assert r.status_code == 201, r.text
        ev = r.json()
        assert ev["total"] == 2 and ev["miou"] is None  # the two accepted images
        assert _finish_run(st, "alpha", ev["evaluation_id"], truth, folder="e") == "SUCCEEDED"
        done = a.get(f"/v1/evaluations/{ev['evaluation_id']}").json()
        assert done["state"] == "SUCCEEDED" and done["n_images"] == 2
        assert done["per_class"]["1"]["iou"] < 1.0 and 0 < done["miou"] < 1.0  # ids[2] was edited
        assert [
            e["evaluation_id"]
            for e in a.get(f"/v1/datasets/{ds}/evaluations").json()["evaluations"]
        ] == [ev["evaluation_id"]]

        rid = run["run_id"]
        for method, path in (
            ("GET", f"/v1/predictions/{rid}"),
            ("DELETE", f"/v1/predictions/{rid}"),
            ("GET", f"/v1/predictions/{rid}/events"),
            ("GET", f"/v1/predictions/{rid}/results"),
            ("GET", f"/v1/predictions/{rid}/results/{ids[1]}"),
            ("POST", f"/v1/predictions/{rid}/results/{ids[1]}/accept"),
            ("POST", f"/v1/predictions/{rid}/results/{ids[1]}/reject"),
            ("GET", f"/v1/datasets/{ds}/predictions"),
            ("GET", f"/v1/datasets/{ds}/evaluations"),
            ("GET", f"/v1/evaluations/{ev['evaluation_id']}"),
        ):
            assert_error(b.request(method, path), 404)
        assert_error(
            b.post(f"/v1/datasets/{ds}/predictions", json={"references": [{"image_id": ids[0]}]}),
            404,
        )
        assert_error(
            b.post(
                "/v1/evaluations", json={"dataset_id": ds, "references": [{"image_id": ids[0]}]}
            ),
            404,
        )
        assert_error(a.delete(f"/v1/predictions/{rid}"), 409)  # already ended


def test_a_weight_delta_model_exports_as_a_merged_plain_sam_checkpoint(tmp_path):
    """?format=merged folds a LoRA model into a plain SAM state dict that computes what the
    tuned model computes; an E-PEFT model (adapters, prompts) is refused with a 400."""
    import torch

    from vplab.inference.runtime import DEMO_SAM
    from vplab.models import build_sam
    from vplab.models.base import resolve_base_sam
    from vplab.peft import make_config
    from vplab.peft.core import apply_method
    from vplab.tuned import save_tuned_model

    torch.manual_seed(0)
    with running_stack(LocalStore(tmp_path / "store"), tmp_path, demo=True) as st:
        tenant = next(iter(st.keys))
        base = resolve_base_sam(DEMO_SAM)
        for model_id, method in (("m-lora00000000", "lora"), ("m-epeft0000000", "epeft")):
            sam = base.build()
            config = make_config(method)
            apply_method(sam, method, config)
            with torch.no_grad():  # LoRA's B starts at zero: move it so the merge matters
                for p in sam.parameters():
                    if p.requires_grad:
                        p.add_(0.05 * torch.randn_like(p))
            ref = {"name": base.name, "sha256": base.sha256}
            save_tuned_model(st.store, tenant, model_id, sam, method, config, ref)
            if method == "lora":
                tuned_sam = sam.eval()
        with client(st, tenant) as c:
            r = c.get("/v1/models/m-lora00000000/export", params={"format": "merged"})
            assert r.status_code == 200, r.text
            assert "merged.pth" in r.headers["content-disposition"]
            state = torch.load(io.BytesIO(r.content), weights_only=True)
            plain = build_sam(DEMO_SAM, random_init=True)
            plain.load_state_dict(state, strict=True)  # a plain SAM: no adapter keys
            x = torch.randn(1, 3, 256, 256)
            with torch.no_grad():
                # Equal up to float rounding (the folded weight sums in another order),
                # which 6 blocks amplify to ~1e-4; a wrong merge is off by ~1e-1.
                merged_out, tuned_out = plain.image_encoder(x), tuned_sam.image_encoder(x)
                assert torch.allclose(merged_out, tuned_out, rtol=1e-3, atol=1e-3)
                assert not torch.allclose(merged_out, base.build().image_encoder(x), atol=1e-2)
            r = c.get("/v1/models/m-epeft0000000/export", params={"format": "merged"})
            assert_error(r, 400, "invalid_argument")
            assert "not a pure weight delta" in r.json()["error"]["message"]
            assert c.get("/v1/models/m-epeft0000000/export").status_code == 200  # the adapter


def test_every_bound_in_the_openapi_document_is_json_schema(local_stack):
    """pydantic writes a bound it cannot apply (e.g. behind a before-validator) as a raw
    ``ge`` / ``le`` key, which no client or fuzzer reads: the bound silently vanishes."""
    with httpx.Client(base_url=local_stack.url) as c:
        doc = c.get("/openapi.json").json()
    leaked: list[str] = []

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            leaked.extend(f"{path}.{k}" for k in ("ge", "le", "gt", "lt") if k in node)
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(doc, "$")
    assert leaked == []
