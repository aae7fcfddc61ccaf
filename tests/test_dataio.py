"""Import and export through the gateway (real uvicorn, fake services, a local store):
COCO and PNG-mask archives round-trip exactly; re-importing adds nothing; malformed
archives and COCO files are 4xx with the reason and write nothing; a corrupt file is
reported and the rest imported."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from vplab.images import encode_png
from vplab.storage import LocalStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gateway_harness import running_stack


@pytest.fixture
def st(tmp_path):
    with running_stack(LocalStore(tmp_path / "store"), tmp_path) as s:
        s.key = next(iter(s.keys.values()))
        s.http = httpx.Client(
            base_url=s.url, headers={"Authorization": f"Bearer {s.key}"}, timeout=60
        )
        yield s
        s.http.close()


def _png_mask(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _import(st, ds: str, body: bytes, **kwargs) -> dict:
    """POST the archive: a QUEUED import job, which the fake's worker (the library's)
    runs to its end; its report with the per-file errors."""
    r = st.http.post(f"/v1/datasets/{ds}/import", content=body, **kwargs)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["kind"] == "import" and job["state"] == "QUEUED" and job["total"] > 0, job
    done = st.http.get(f"/v1/data-jobs/{job['job_id']}").json()
    assert done["state"] == "SUCCEEDED" and done["done"] == done["total"], done
    return {**done["report"], "errors": done["errors"]}


def _dataset(st, name="src", classes=("polyp", "bubble")) -> str:
    r = st.http.post("/v1/datasets", json={"name": name, "classes": [{"name": c} for c in classes]})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _labelled_dataset(st, n=4):
    ds = _dataset(st)
    rng = np.random.default_rng(0)
    ids, labels = [], {}
    for i in range(n):
        img = rng.integers(0, 255, (40 + i, 50, 3), np.uint8)
        files = {"file": (f"im{i}.png", encode_png(img), "image/png")}
        ids.append(st.http.post(f"/v1/datasets/{ds}/images", files=files).json()["image_id"])
        if i < n - 1:  # the last image stays unlabelled
            lm = np.zeros((40 + i, 50), np.uint8)
            lm[5:20, 5 + i : 30] = 1
            lm[25:35, 30:45] = 2
            r = st.http.put(
                f"/v1/datasets/{ds}/labels/{ids[-1]}",
                content=_png_mask(lm),
                headers={"Content-Type": "image/png"},
            )
            assert r.status_code == 200, r.text
            labels[ids[-1]] = lm
    return ds, ids, labels


def _labels(st, ds: str) -> dict[str, np.ndarray]:
    names = {c["id"]: c["name"] for c in st.http.get(f"/v1/datasets/{ds}").json()["classes"]}
    out = {}
    for image_id in st.http.get(f"/v1/datasets/{ds}/labels").json():
        png = st.http.get(f"/v1/datasets/{ds}/labels/{image_id}").content
        arr = np.asarray(Image.open(io.BytesIO(png)))
        out[image_id] = {names[v]: arr == v for v in np.unique(arr) if v}
    return out


@pytest.mark.parametrize("fmt", ["coco", "masks"])
def test_export_then_import_into_a_new_dataset_gives_identical_labels(st, tmp_path, fmt):
    ds, _ids, labels = _labelled_dataset(st)
    r = st.http.get(f"/v1/datasets/{ds}/export", params={"format": fmt})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    archive = r.content
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        names = set(z.namelist())
        assert {f"images/im{i}.png" for i in range(4)} <= names
        if fmt == "coco":
            (tmp_path / "a.json").write_bytes(z.read("annotations.json"))
            coco = COCO(str(tmp_path / "a.json"))  # pycocotools loads it
            assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["polyp", "bubble"]
            assert len(coco.imgs) == 4 and len(coco.anns) == 6  # 3 labelled x 2 classes
            sizes = {im["file_name"]: (im["height"], im["width"]) for im in coco.imgs.values()}
            assert sizes == {f"im{i}.png": (40 + i, 50) for i in range(4)}
            assert coco.dataset["info"]["source"] == "labels"
            for ann in coco.anns.values():  # the RLE decodes to the class's pixels
                image_id = coco.imgs[ann["image_id"]]["vplab_image_id"]
                assert np.array_equal(
                    coco.annToMask(ann) > 0, labels[image_id] == ann["category_id"]
                )
        else:
            assert {f"masks/im{i}.png" for i in range(3)} <= names and "masks/im3.png" not in names
            classes = json.loads(z.read("classes.json"))["classes"]
            assert [c["name"] for c in classes] == ["polyp", "bubble"]
    new = _dataset(st, "copy", classes=("other",))
    report = _import(st, new, archive, headers={"Content-Type": "application/zip"})
    assert report["layout"] == fmt and report["images_added"] == 4 and report["labels_written"] == 3
    assert report["classes_added"] == ["polyp", "bubble"] and report["errors"] == []
    got, want = _labels(st, new), _labels(st, ds)
    assert set(got) == set(want) == set(labels)
    for image_id in want:
        assert set(got[image_id]) == set(want[image_id])
        for name in want[image_id]:
            assert np.array_equal(got[image_id][name], want[image_id][name])
    # Idempotent: the same archive again adds nothing.
    again = _import(st, new, archive)
    assert again["images_added"] == 0 and again["images_present"] == 4
    assert again["labels_written"] == 0 and again["labels_unchanged"] == 3
    assert again["classes_added"] == []
    assert st.http.get(f"/v1/datasets/{new}/labels").json() == {i: 1 for i in labels}


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def _coco(images, annotations, categories=({"id": 1, "name": "polyp"},)) -> bytes:
    return json.dumps(
        {"images": images, "annotations": annotations, "categories": list(categories)}
    ).encode()


IMG = encode_png(np.full((20, 30, 3), 128, np.uint8))
GOOD_IMAGE = {"id": 1, "file_name": "a.png", "width": 30, "height": 20}
POLY = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 20, 2, 20, 15, 2, 15]]}


def _bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images/big.png", b"\0" * (80 * 1024 * 1024))  # 80 MB of zeros, ~80 KB packed
    return buf.getvalue()


def _tar_with_link() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("images/a.png")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        t.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not an archive at all", "neither a zip nor a tar"),
        (_zip({"../evil.png": IMG}), "unsafe path"),
        (_zip({"/abs/evil.png": IMG}), "unsafe path"),
        (_bomb(), "bytes (at most"),
        (_zip({"images/z.png": b"\0" * (30 * 1024 * 1024)}), "inflates"),
        (_tar_with_link(), "link"),
        (_zip({"masks/a.png": IMG}), "no images"),
        (
            _zip({"images/a.png": IMG, "ann.json": _coco([GOOD_IMAGE], [{**POLY, "image_id": 7}])}),
            "image id 7",
        ),
        (
            _zip(
                {"images/a.png": IMG, "ann.json": _coco([GOOD_IMAGE], [{**POLY, "category_id": 9}])}
            ),
            "category id 9",
        ),
        (
            _zip(
                {
                    "images/a.png": IMG,
                    "ann.json": _coco(
                        [GOOD_IMAGE], [{**POLY, "segmentation": [[2, 2, 40, 2, 20, 15]]}]
                    ),
                }
            ),
            "outside",
        ),
        (
            _zip(
                {
                    "images/a.png": IMG,
                    "ann.json": _coco([{**GOOD_IMAGE, "file_name": "zz.png"}], []),
                }
            ),
            "not in the archive",
        ),
        (_zip({"images/a.png": IMG, "ann.json": b"{not json"}), "not valid JSON"),
        (
            _zip(
                {
                    "images/a.png": IMG,
                    "ann.json": json.dumps(
                        {"images": [GOOD_IMAGE], "annotations": [POLY]}
                    ).encode(),
                }
            ),
            "has annotations but no categories",
        ),
    ],
)
def test_malformed_archives_are_400_with_the_reason_and_write_nothing(st, body, reason):
    ds = _dataset(st, "target")
    before = st.http.get(f"/v1/datasets/{ds}").json()
    r = st.http.post(f"/v1/datasets/{ds}/import", content=body)
    assert r.status_code == 400, r.text
    assert reason in r.json()["error"]["message"], r.json()
    assert st.http.get(f"/v1/datasets/{ds}/images").json()["images"] == []
    assert st.http.get(f"/v1/datasets/{ds}").json() == before  # no class added either
    assert st.http.get(f"/v1/datasets/{ds}/data-jobs").json() == {"jobs": []}  # none queued


def test_a_corrupt_file_is_reported_and_the_rest_is_imported(st):
    ds = _dataset(st, "mixed", classes=("polyp",))
    mask = np.zeros((20, 30), np.uint8)
    mask[3:9, 4:12] = 255
    body = _zip(
        {
            "images/good.png": IMG,
            "images/broken.png": b"\x89PNG\r\n\x1a\n garbage",
            "images/other.png": encode_png(np.zeros((20, 30, 3), np.uint8)),
            "masks/good.png": _png_mask(mask),
            "masks/other.png": _png_mask(np.zeros((5, 5), np.uint8)),  # wrong size
        }
    )
    report = _import(st, ds, body)
    assert report["images_added"] == 2 and report["labels_written"] == 1
    errors = {e["entry"]: e["error"] for e in report["errors"]}
    assert set(errors) == {"images/broken.png", "images/other.png"}
    assert "30x20" in errors["images/other.png"] or "must match" in errors["images/other.png"]
    assert len(st.http.get(f"/v1/datasets/{ds}/labels").json()) == 1


def _sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


def test_an_import_is_a_job_with_an_event_per_file_and_its_archive_goes_when_it_ends(st):
    ds = _dataset(st, "events", classes=("polyp",))
    mask = np.zeros((20, 30), np.uint8)
    mask[3:9, 4:12] = 1
    body = _zip(
        {
            "images/a.png": IMG,
            "images/b.png": b"\x89PNG\r\n\x1a\n garbage",
            "masks/a.png": _png_mask(mask),
        }
    )
    report = _import(st, ds, body)
    (job,) = st.http.get(f"/v1/datasets/{ds}/data-jobs").json()["jobs"]
    assert job["kind"] == "import" and job["total"] == 2 and job["attempts"] == 1
    assert report["images_added"] == 1 and [e["entry"] for e in report["errors"]] == [
        "images/b.png"
    ]
    r = st.http.get(f"/v1/data-jobs/{job['job_id']}/events")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r.text)
    assert [name for name, _ in events] == ["progress", "item", "item", "end"], events
    items = {e["entry"]: e for name, e in events if name == "item"}
    assert items["images/a.png"]["message"] == "" and items["images/b.png"]["message"]
    assert [e["done"] for name, e in events if name == "item"] == [1, 2]
    assert events[-1][1]["state"] == "SUCCEEDED" and events[-1][1]["total"] == 2
    # Resumes after the last event seen: only the end.
    r = st.http.get(f"/v1/data-jobs/{job['job_id']}/events", headers={"Last-Event-ID": "3"})
    assert [name for name, _ in _sse(r.text)] == ["end"]
    # The archive was stored with the job and removed when it ended.
    from vplab.storage import keys

    tenant = next(iter(st.keys))
    assert not st.store.exists(keys.data_job_archive(tenant, job["job_id"]))
    assert st.http.delete(f"/v1/data-jobs/{job['job_id']}").status_code == 409  # ended
    assert st.http.get("/v1/data-jobs/d-000000000000").status_code == 404


def test_precomputing_embeddings_is_a_job_over_every_image(st):
    ds = _dataset(st, "embed")
    empty = st.http.post(f"/v1/datasets/{ds}/embeddings")
    assert empty.status_code == 400 and "no images" in empty.json()["error"]["message"]
    for i in range(3):
        files = {"file": (f"i{i}.png", encode_png(np.full((8, 8, 3), i, np.uint8)), "image/png")}
        assert st.http.post(f"/v1/datasets/{ds}/images", files=files).status_code == 201
    bad = st.http.post(f"/v1/datasets/{ds}/embeddings", json={"encoders": ["clip"]})
    assert bad.status_code == 400
    assert st.http.post("/v1/datasets/d-000000000000/embeddings").status_code == 404
    r = st.http.post(f"/v1/datasets/{ds}/embeddings", json={"encoders": ["sam"]})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["kind"] == "embeddings" and job["state"] == "QUEUED"
    assert job["total"] == 3 and job["encoders"] == ["sam"]
    both = st.http.post(f"/v1/datasets/{ds}/embeddings").json()
    assert both["encoders"] == ["sam", "dinov2"]
    cancelled = st.http.delete(f"/v1/data-jobs/{both['job_id']}")
    assert cancelled.status_code == 200, cancelled.text
    listed = st.http.get(f"/v1/datasets/{ds}/data-jobs").json()["jobs"]
    assert {j["job_id"] for j in listed} == {job["job_id"], both["job_id"]}


def test_coco_polygons_become_label_maps_and_categories_become_classes(st):
    ds = _dataset(st, "poly", classes=("object",))
    body = _zip(
        {
            "images/a.png": IMG,
            "coco.json": _coco(
                [GOOD_IMAGE],
                [
                    POLY,
                    {
                        "id": 2,
                        "image_id": 1,
                        "category_id": 2,
                        "segmentation": [[22, 3, 28, 3, 28, 9, 22, 9]],
                    },
                ],
                [{"id": 1, "name": "polyp"}, {"id": 2, "name": "object"}],
            ),
        }
    )
    report = _import(st, ds, body)
    assert report["layout"] == "coco" and report["classes_added"] == ["polyp"], report
    (image_id,) = st.http.get(f"/v1/datasets/{ds}/labels").json()
    classes = {c["name"]: c["id"] for c in st.http.get(f"/v1/datasets/{ds}").json()["classes"]}
    arr = np.asarray(
        Image.open(io.BytesIO(st.http.get(f"/v1/datasets/{ds}/labels/{image_id}").content))
    )
    assert arr[8, 10] == classes["polyp"] and arr[5, 25] == classes["object"] and arr[18, 1] == 0


def test_export_rejects_bad_sources_and_unknown_runs(st):
    ds = _dataset(st, "x")
    assert st.http.get(f"/v1/datasets/{ds}/export", params={"source": "nope"}).status_code == 400
    r = st.http.get(f"/v1/datasets/{ds}/export", params={"source": "predictions:p-000000000000"})
    assert r.status_code == 404
    assert st.http.get("/v1/datasets/d-000000000000/export").status_code == 404
    assert st.http.post("/v1/datasets/d-000000000000/import", content=b"x").status_code == 404


def test_vplab_import_cli_imports_into_the_configured_store(tmp_path, monkeypatch, capsys):
    from vplab.cli import main
    from vplab.datasets import DatasetStore
    from vplab.settings import Settings, get_settings
    from vplab.storage import open_store
    from vplab.tenancy import create_tenant

    monkeypatch.setenv("VPLAB_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        settings = Settings()
        datasets = DatasetStore(open_store(settings), settings)
        tenant, _ = create_tenant(datasets.store, "cli", settings.api_key_pepper)
        ds = datasets.create_dataset(tenant.id, "cli")
        mask = np.zeros((20, 30), np.uint8)
        mask[2:8, 2:8] = 1
        archive = tmp_path / "in.zip"
        archive.write_bytes(_zip({"a.png": IMG, "masks/a.png": _png_mask(mask)}))
        assert main(["import", str(archive), "--tenant", tenant.id, "--dataset", ds.id]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["images_added"] == 1 and report["labels_written"] == 1
        assert len(datasets.list_labels(tenant.id, ds.id)) == 1
    finally:
        get_settings.cache_clear()


def test_the_sdk_imports_follows_the_job_and_exports(st, tmp_path):
    from vplab.client import VPLabClient

    ds, _ids, labels = _labelled_dataset(st)
    with VPLabClient(st.url, st.key) as client:
        archive = client.export_dataset(ds, tmp_path / "out.zip", format="masks")
        assert zipfile.ZipFile(archive).read("classes.json")
        new = client.create_dataset("from-sdk")["id"]
        job = client.import_archive(new, archive)
        assert job["state"] == "QUEUED" and job["total"] == 4
        seen: list[dict] = []
        done = client.wait_for_data_job(job["job_id"], on_event=seen.append, timeout=30)
        assert done["state"] == "SUCCEEDED" and done["report"]["labels_written"] == 3
        assert [e["phase"] for e in seen] == ["start", "item", "item", "item", "item", "end"]
        assert [j["job_id"] for j in client.list_data_jobs(new)] == [job["job_id"]]
        assert set(client.list_labels(new)) == set(labels)


def test_a_channels_setting_applies_to_imported_tiffs_and_the_record_says_so(st):
    import tifffile

    r = st.http.post("/v1/datasets", json={"name": "gfp", "channels": [1]})
    assert r.status_code == 201 and r.json()["channels"] == [1], r.text
    ds = r.json()["id"]
    for bad in ([0, 1, 2, 3], [-1], [1, 1], ["a"]):
        assert st.http.post("/v1/datasets", json={"name": "x", "channels": bad}).status_code == 400
    buf = io.BytesIO()
    arr = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    tifffile.imwrite(buf, arr, photometric="minisblack", metadata={"axes": "CYX"})
    report = _import(st, ds, _zip({"images/cells.tif": buf.getvalue()}))
    assert report["images_added"] == 1
    (image_id,) = st.http.get(f"/v1/datasets/{ds}/images").json()["images"]
    info = st.http.get(f"/v1/datasets/{ds}/images/{image_id}").json()
    assert info["filename"] == "cells.tif" and info["metadata"]["channels"] == [1]
    assert info["metadata"]["shape"] == [3, 20, 30]
    again = _import(st, ds, _zip({"images/cells.tif": buf.getvalue()}))
    assert again["images_added"] == 0 and again["images_present"] == 1
    cleared = st.http.patch(f"/v1/datasets/{ds}", json={"channels": []}).json()
    assert cleared["channels"] is None
    assert st.http.get(f"/v1/datasets/{ds}/images/{'0' * 64}").status_code == 404
