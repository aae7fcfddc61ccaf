"""DatasetStore: datasets, images, labels; isolation, quotas, nothing-written (both stores)."""

from __future__ import annotations

import io
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from vplab.datasets import DatasetStore
from vplab.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    QuotaExceeded,
)
from vplab.images import image_sha256
from vplab.masks import encode_binary_mask, encode_label_map
from vplab.settings import Settings
from vplab.storage import ArtifactStore, LocalStore, keys
from vplab.tenancy import Tenant

A, B = "acme", "globex"
H, W = 12, 16


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return request.getfixturevalue("s3_store")


@pytest.fixture
def ds(store) -> DatasetStore:
    return DatasetStore(store, Settings(max_image_pixels=100_000, max_image_bytes=200_000))


def run_together(n: int, work) -> None:
    """Run ``work(k)`` for k < n in n threads released at once by a barrier (each thread is
    its own "gateway replica"); re-raise the first error any of them hit."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def run(k: int) -> None:
        barrier.wait()
        try:
            work(k)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]


def png(seed: int = 0, h: int = H, w: int = W) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def mask_png(h: int = H, w: int = W, seed: int = 0) -> bytes:
    return encode_binary_mask(np.random.default_rng(seed).random((h, w)) > 0.5)


def forged_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def snapshot(store: ArtifactStore) -> dict[str, bytes]:
    return {k: store.get_bytes(k) for k in store.list("")}


# --- datasets --------------------------------------------------------------------------------


def test_dataset_crud(ds):
    d1 = ds.create_dataset(A, "Cells, batch 1")
    d2 = ds.create_dataset(Tenant(A, "Acme", ""), "cracks", dataset_id="cracks")
    assert d1.id.startswith("d-") and d1.name == "Cells, batch 1" and d1.created_at
    assert ds.get_dataset(A, d1.id) == d1
    ds.add_image(A, d1.id, png(0))  # markers under datasets/ must not confuse listings
    assert {d.id for d in ds.list_datasets(A)} == {d1.id, "cracks"}
    assert ds.list_datasets(B) == []
    with pytest.raises(Conflict):
        ds.create_dataset(A, "again", dataset_id="cracks")
    for bad in ("", "   ", "x" * 201, "a\nb"):
        with pytest.raises(InvalidInput):
            ds.create_dataset(A, bad)
    with pytest.raises(InvalidInput):
        ds.create_dataset(A, "x", dataset_id="../up")
    ds.delete_dataset(A, d2.id)
    with pytest.raises(NotFound):
        ds.get_dataset(A, d2.id)
    assert [d.id for d in ds.list_datasets(A)] == [d1.id]


# --- images ----------------------------------------------------------------------------------


def test_add_image_content_addressed_and_idempotent(ds, store):
    d = ds.create_dataset(A, "d").id
    data = png(1)
    image_id = ds.add_image(A, d, data, filename="C:\\scans\\img 1.png")
    assert image_id == image_sha256(data)
    assert store.get_bytes(keys.image(A, image_id)) == data
    assert store.exists(keys.dataset_image(A, d, image_id))
    before = snapshot(store)
    assert ds.add_image(A, d, data, filename="other.png") == image_id
    assert snapshot(store) == before  # re-upload changes nothing
    assert ds.list_images(A, d) == [image_id]
    assert ds.image_in_dataset(A, d, image_id)
    assert not ds.image_in_dataset(A, d, "0" * 64)
    assert ds.image_info(A, d, image_id).filename == "img 1.png"
    assert ds.get_image_bytes(A, image_id) == data
    assert ds.get_image(A, image_id).shape == (H, W, 3)
    # The same bytes in a second dataset share one stored object.
    d2 = ds.create_dataset(A, "d2").id
    assert ds.add_image(A, d2, data) == image_id
    assert store.list(keys.images_prefix(A)) == [keys.image(A, image_id)]


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: b"not an image at all", InvalidInput),
        (lambda: png(0)[:60], InvalidInput),  # truncated
        (lambda: forged_png(100_000, 100_000), PayloadTooLarge),  # bomb header
        (lambda: forged_png(400, 400), PayloadTooLarge),  # over max_image_pixels
        (lambda: b"\x89PNG" + b"\x00" * 300_000, PayloadTooLarge),  # over max_image_bytes
        (lambda: "a string", InvalidInput),
    ],
)
def test_bad_images_rejected_and_nothing_written(ds, store, make, error):
    d = ds.create_dataset(A, "d").id
    ds.add_image(A, d, png(0))
    before = snapshot(store)
    with pytest.raises(error):
        ds.add_image(A, d, make())
    assert snapshot(store) == before


def test_bad_targets_rejected_and_nothing_written(ds, store):
    d = ds.create_dataset(A, "d").id
    other = ds.create_dataset(B, "theirs").id
    before = snapshot(store)
    with pytest.raises(NotFound):
        ds.add_image(A, "no-such", png(1))
    with pytest.raises(NotFound):
        ds.add_image(A, other, png(1))  # another tenant's dataset
    with pytest.raises(InvalidInput):
        ds.add_image(A, "../" + d, png(1))
    with pytest.raises(InvalidInput):
        ds.add_image(A, d, png(1), filename="bad\x00name")
    with pytest.raises(InvalidInput):
        ds.add_image("Not A Tenant", d, png(1))
    assert snapshot(store) == before


def test_quotas_enforced_before_writing(store):
    ds = DatasetStore(store, Settings(quota_images=2, quota_bytes=10**9))
    d = ds.create_dataset(A, "d").id
    ids = [ds.add_image(A, d, png(i)) for i in range(2)]
    before = snapshot(store)
    with pytest.raises(QuotaExceeded, match=r"2 images.*limit is 2.*quota_images"):
        ds.add_image(A, d, png(2))
    assert snapshot(store) == before
    # Re-uploads and adding a stored image to another dataset need no new room.
    assert ds.add_image(A, d, png(0)) == ids[0]
    d2 = ds.create_dataset(A, "d2").id
    assert ds.add_image(A, d2, png(1)) == ids[1]
    # Another tenant has its own quota.
    ds.add_image(B, ds.create_dataset(B, "b").id, png(2))
    # Removing an image frees room.
    ds.remove_image(A, d, ids[0])
    ds.add_image(A, d, png(3))

    size = len(png(0))
    ds2 = DatasetStore(store, Settings(quota_images=100, quota_bytes=size + size // 2))
    t = "tiny"
    d3 = ds2.create_dataset(t, "d").id
    ds2.add_image(t, d3, png(0))
    before = snapshot(store)
    with pytest.raises(QuotaExceeded, match="quota_bytes"):
        ds2.add_image(t, d3, png(1))
    assert snapshot(store) == before


def test_concurrent_uploads_lose_nothing(store):
    settings = Settings()
    d = DatasetStore(store, settings).create_dataset(A, "d").id
    n_threads, per_thread = 6, 4
    ids: list[str] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        replica = DatasetStore(store, settings)  # one "gateway replica" per thread
        for i in range(per_thread):
            image_id = replica.add_image(A, d, png(100 + k * per_thread + i))
            with lock:
                ids.append(image_id)
        replica.add_image(A, d, png(100))  # everyone also uploads one shared image

    run_together(n_threads, worker)
    assert len(set(ids)) == n_threads * per_thread
    assert DatasetStore(store, settings).list_images(A, d) == sorted(set(ids))


def test_remove_image_and_garbage_collection(ds, store):
    d1 = ds.create_dataset(A, "d1").id
    d2 = ds.create_dataset(A, "d2").id
    shared = ds.add_image(A, d1, png(1))
    ds.add_image(A, d2, png(1))
    only = ds.add_image(A, d1, png(2))
    ds.put_label(A, d1, shared, mask_png())
    ds.remove_image(A, d1, shared)
    assert ds.list_images(A, d1) == [only]
    assert store.exists(keys.image(A, shared))  # still used by d2
    assert store.list(keys.image_labels_prefix(A, d1, shared)) == []
    with pytest.raises(NotFound):
        ds.remove_image(A, d1, shared)
    ds.remove_image(A, d1, only)
    assert not store.exists(keys.image(A, only))  # no dataset uses it any more
    with pytest.raises(NotFound):
        ds.get_image_bytes(A, only)
    # delete_dataset removes markers, labels and the bytes nobody else references.
    ds.put_label(A, d2, shared, mask_png())
    ds.delete_dataset(A, d2)
    assert store.list(keys.tenant_prefix(A)) == [keys.dataset(A, d1)]


def test_collector_restores_bytes_when_an_upload_races(ds, store):
    """The add_image/collector protocol: a marker written between the collector's delete
    and its re-check makes the collector put the bytes back."""
    d1, d2 = ds.create_dataset(A, "d1").id, ds.create_dataset(A, "d2").id
    image_id = ds.add_image(A, d1, png(5))
    real_delete = store.delete

    def delete_then_race(key: str) -> None:
        real_delete(key)
        if key == keys.image(A, image_id):  # another replica adds the image to d2 now
            store.put_json(keys.dataset_image(A, d2, image_id), {"filename": None})

    store.delete = delete_then_race
    try:
        ds.remove_image(A, d1, image_id)
    finally:
        store.delete = real_delete
    assert ds.list_images(A, d2) == [image_id]
    assert ds.get_image_bytes(A, image_id) == png(5)


# --- labels ----------------------------------------------------------------------------------


def test_label_versions(ds, store):
    d = ds.create_dataset(A, "d").id
    i1, i2 = ds.add_image(A, d, png(1)), ds.add_image(A, d, png(2))
    assert ds.list_labels(A, d) == {}
    with pytest.raises(NotFound):
        ds.get_label(A, d, i1)
    m1, m2 = mask_png(seed=1), mask_png(seed=2)
    assert ds.put_label(A, d, i1, m1).version == 1
    assert ds.put_label(A, d, i1, m2).version == 2
    labels = np.zeros((H, W), np.uint16)
    labels[2:5, 3:9] = 300  # a uint16 label map
    assert ds.put_label(A, d, i2, encode_label_map(labels)).version == 1
    assert store.exists(keys.label(A, d, i1, 2))
    assert ds.list_labels(A, d) == dict(sorted({i1: 2, i2: 1}.items()))
    latest = ds.get_label(A, d, i1)
    assert latest.version == 2
    np.testing.assert_array_equal(latest.mask(), np.asarray(Image.open(io.BytesIO(m2))) > 0)
    np.testing.assert_array_equal(
        ds.get_label(A, d, i1, 1).mask(), np.asarray(Image.open(io.BytesIO(m1))) > 0
    )
    np.testing.assert_array_equal(ds.get_label(A, d, i2).label_map(), labels)
    with pytest.raises(NotFound):
        ds.get_label(A, d, i1, 3)
    with pytest.raises(InvalidInput):
        ds.get_label(A, d, i1, 0)
    samples = ds.labeled_samples(A, d)
    assert [s[0] for s in samples] == sorted([i1, i2])
    for _image_id, image, label in samples:
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert label.shape == (H, W) and label.dtype == bool
    by_id = {s[0]: s for s in samples}
    np.testing.assert_array_equal(by_id[i2][2], labels > 0)
    np.testing.assert_array_equal(by_id[i1][1], ds.get_image(A, i1))


def test_label_accepts_binary_palette_and_grey_rgb(ds):
    d = ds.create_dataset(A, "d").id
    i = ds.add_image(A, d, png(1))
    fg = np.zeros((H, W), bool)
    fg[3:7, 2:10] = True
    variants = []
    for mode in ("1", "L", "P", "RGB", "LA"):
        img = Image.fromarray((fg * 255).astype(np.uint8)).convert(mode)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        variants.append(buf.getvalue())
    for k, data in enumerate(variants, start=1):
        assert ds.put_label(A, d, i, data).version == k
        np.testing.assert_array_equal(ds.get_label(A, d, i).mask(), fg)


def test_label_matches_exif_oriented_image(ds):
    d = ds.create_dataset(A, "d").id
    arr = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the decoded image is W x H
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", exif=exif.tobytes())
    i = ds.add_image(A, d, buf.getvalue())
    assert ds.get_image(A, i).shape == (W, H, 3)
    with pytest.raises(InvalidInput, match="must match"):
        ds.put_label(A, d, i, mask_png(H, W))
    assert ds.put_label(A, d, i, mask_png(W, H)).version == 1


def test_bad_labels_rejected_and_nothing_written(ds, store):
    d = ds.create_dataset(A, "d").id
    i = ds.add_image(A, d, png(1))
    outside = ds.add_image(A, ds.create_dataset(A, "other").id, png(2))
    ds.put_label(A, d, i, mask_png())
    colour = png(3)  # a colour RGB PNG of the right size
    buf = io.BytesIO()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(buf, format="JPEG")
    bad = [
        (i, mask_png(H + 1, W), InvalidInput),  # wrong size
        (i, mask_png(W, H), InvalidInput),  # transposed
        (i, b"garbage", InvalidInput),
        (i, buf.getvalue(), InvalidInput),  # JPEG: lossy formats corrupt class ids
        (i, colour, InvalidInput),
        (i, forged_png(100_000, 100_000), PayloadTooLarge),
        (i, mask_png()[:50], InvalidInput),  # truncated
        ("f" * 64, mask_png(), NotFound),  # unknown image
        (outside, mask_png(), NotFound),  # the tenant's image, but not in this dataset
        ("nope", mask_png(), InvalidInput),  # malformed id
    ]
    before = snapshot(store)
    for image_id, data, error in bad:
        with pytest.raises(error):
            ds.put_label(A, d, image_id, data)
        assert snapshot(store) == before, (image_id, error)
    with pytest.raises(NotFound):
        ds.put_label(A, "no-such", i, mask_png())
    assert snapshot(store) == before


# --- tenant isolation --------------------------------------------------------------------------


def test_other_tenants_get_not_found_everywhere(ds, store):
    d = ds.create_dataset(A, "secret").id
    i = ds.add_image(A, d, png(1))
    ds.put_label(A, d, i, mask_png())
    ds.create_dataset(B, "mine", dataset_id="mine")
    before = snapshot(store)
    calls = [
        lambda: ds.get_dataset(B, d),
        lambda: ds.list_images(B, d),
        lambda: ds.add_image(B, d, png(9)),
        lambda: ds.image_in_dataset(B, d, i),
        lambda: ds.image_info(B, d, i),
        lambda: ds.get_image_bytes(B, i),
        lambda: ds.get_image(B, i),
        lambda: ds.remove_image(B, d, i),
        lambda: ds.put_label(B, d, i, mask_png()),
        lambda: ds.get_label(B, d, i),
        lambda: ds.get_label(B, d, i, 1),
        lambda: ds.list_labels(B, d),
        lambda: ds.labeled_samples(B, d),
        lambda: ds.delete_dataset(B, d),
        # B's own dataset, A's image id: still NotFound.
        lambda: ds.remove_image(B, "mine", i),
        lambda: ds.put_label(B, "mine", i, mask_png()),
        lambda: ds.get_label(B, "mine", i),
        lambda: ds.image_info(B, "mine", i),
    ]
    for k, call in enumerate(calls):
        with pytest.raises(NotFound) as e:
            call()
        assert A not in e.value.message, k
    assert snapshot(store) == before
    assert ds.list_datasets(B)[0].id == "mine"
    assert not ds.image_in_dataset(B, "mine", i)
    # A still sees everything.
    assert ds.list_labels(A, d) == {i: 1}


def test_dataset_key_builders():
    sha = "ab" * 32
    assert keys.dataset_image(A, "d1", sha) == f"tenants/{A}/datasets/d1/images/{sha}"
    assert keys.dataset_images_prefix(A, "d1") == f"tenants/{A}/datasets/d1/images/"
    assert keys.parse_dataset_image(keys.dataset_image(A, "d1", sha), A) == ("d1", sha)
    assert keys.parse_dataset_record(keys.dataset(A, "d1"), A) == "d1"
    for other in (
        keys.dataset(A, "d1"),
        keys.image(A, sha),
        keys.dataset_image(B, "d1", sha),
        f"tenants/{A}/datasets/d1/images/{sha}/x",
        f"tenants/{A}/datasets/D1/images/{sha}",
    ):
        assert keys.parse_dataset_image(other, A) is None
    for other in (
        keys.dataset_image(A, "d1", sha),
        keys.dataset(B, "d1"),
        f"tenants/{A}/datasets/a/b.json",
        f"tenants/{A}/datasets/.json",
    ):
        assert keys.parse_dataset_record(other, A) is None
    for bad in ("../x", "D1", "", "a/b"):
        with pytest.raises(InvalidInput):
            keys.dataset_image(A, bad, sha)
    with pytest.raises(InvalidInput):
        keys.dataset_image(A, "d1", "../" + sha[3:])


def test_concurrent_label_writers_lose_nothing(store):
    """32 writers, each its own "replica", correct one image at once: 32 versions, 1..32,
    and every accepted payload is retrievable under the version it was told."""
    settings = Settings(max_image_pixels=100_000, max_image_bytes=200_000)
    setup = DatasetStore(store, settings)
    d = setup.create_dataset(A, "d").id
    image = setup.add_image(A, d, png(1))
    n = 32
    told: dict[int, bytes] = {}
    lock = threading.Lock()

    def writer(k: int) -> None:
        replica = DatasetStore(store, settings)
        label = replica.put_label(A, d, image, mask_png(seed=1000 + k))
        with lock:
            told[label.version] = label.png

    run_together(n, writer)
    assert sorted(told) == list(range(1, n + 1))
    for version, data in told.items():
        assert setup.get_label(A, d, image, version).png == data
    assert len({setup.get_label(A, d, image, v).png for v in told}) == n  # 32 different masks
    assert setup.list_labels(A, d) == {image: n}


def test_if_match_is_optimistic_concurrency(ds):
    d = ds.create_dataset(A, "d").id
    i = ds.add_image(A, d, png(2))
    with pytest.raises(PreconditionFailed, match="no label yet"):
        ds.put_label(A, d, i, mask_png(seed=1), if_match="*")
    first = ds.put_label(A, d, i, mask_png(seed=1), if_none_match="*")
    with pytest.raises(PreconditionFailed, match="already has a label"):
        ds.put_label(A, d, i, mask_png(seed=2), if_none_match="*")
    assert ds.get_label(A, d, i).etag == first.etag
    # Two editors loaded v1; the first save wins, the second gets 412 and writes nothing.
    second = ds.put_label(A, d, i, mask_png(seed=2), if_match=first.etag)
    assert second.version == 2 and second.etag != first.etag
    with pytest.raises(PreconditionFailed, match="changed meanwhile"):
        ds.put_label(A, d, i, mask_png(seed=3), if_match=first.etag)
    assert ds.list_labels(A, d) == {i: 2}
    assert ds.put_label(A, d, i, mask_png(seed=3), if_match=f'W/{second.etag}, "x"').version == 3
    with pytest.raises(InvalidInput):
        ds.put_label(A, d, i, mask_png(seed=4), if_none_match='"v1"')


# --- classes ---------------------------------------------------------------------------------


def test_classes_ids_in_order_default_one_and_validation(ds, store):
    one = ds.create_dataset(A, "binary")
    assert [(c.id, c.name) for c in one.classes] == [(1, "object")]
    three = ds.create_dataset(
        A,
        "tissue",
        classes=[{"name": "gland"}, {"name": "stroma", "color": "#00FF00"}, {"name": "lumen"}],
    )
    assert [(c.id, c.name, c.color) for c in three.classes] == [
        (1, "gland", "#1f77b4"),
        (2, "stroma", "#00ff00"),
        (3, "lumen", "#2ca02c"),
    ]
    assert ds.get_dataset(A, three.id) == three
    before = set(store.list(keys.tenant_prefix(A)))
    for bad, msg in [
        ([], "non-empty"),
        ([{"name": ""}], "class 1 name"),
        ([{"name": "a", "color": "red"}], "#rrggbb"),
        ([{"name": "a", "id": 4}], "name, color"),
        ("gland", "non-empty list"),
    ]:
        with pytest.raises(InvalidInput, match=msg):
            ds.create_dataset(A, "bad", classes=bad)
    assert set(store.list(keys.tenant_prefix(A))) == before  # nothing written


def test_update_dataset_edits_and_appends_never_reusing_ids(ds, store):
    d = ds.create_dataset(A, "tissue", classes=[{"name": "gland"}, {"name": "stroma"}]).id
    got = ds.update_dataset(
        A, d, name="tissue v2", classes=[{"id": 2, "color": "#ABCDEF"}, {"name": "lumen"}]
    )
    assert got.name == "tissue v2"
    assert [(c.id, c.name, c.color) for c in got.classes] == [
        (1, "gland", "#1f77b4"),
        (2, "stroma", "#abcdef"),
        (3, "lumen", "#2ca02c"),
    ]
    assert ds.update_dataset(A, d, classes=[{"id": 3, "name": "duct"}]).classes[2].name == "duct"
    twice = ds.update_dataset(A, d, classes=[{"id": 1, "name": "x"}, {"id": 1, "name": "gland"}])
    assert twice.classes[0].name == "gland"  # the last edit of an id wins
    assert ds.get_dataset(A, d) == ds.list_datasets(A)[0]
    before = {k: store.get_bytes(k) for k in store.list(keys.tenant_prefix(A))}
    for bad, error, msg in [
        ([{"id": 9, "name": "x"}], NotFound, "has no class 9"),
        ([{"id": 1, "name": "duct"}], Conflict, "is used by class"),
        ([{"name": "gland"}], Conflict, "is used by class"),
        ([{"id": True, "name": "y"}], InvalidInput, "must be an integer"),
        ([{"name": "ok"}, {"id": 2, "color": "blue"}], InvalidInput, "#rrggbb"),  # none kept
    ]:
        with pytest.raises(error, match=msg):
            ds.update_dataset(A, d, classes=bad)
    with pytest.raises(InvalidInput):
        ds.update_dataset(A, d, name="  ")
    with pytest.raises(Conflict, match="is used by class 1"):
        ds.create_dataset(A, "dup", classes=[{"name": "a"}, {"name": "A"}])
    after = {k: store.get_bytes(k) for k in store.list(keys.tenant_prefix(A))}
    assert after == before  # nothing written by any rejected update
    with pytest.raises(NotFound):
        ds.update_dataset(B, d, name="theirs")  # another tenant's dataset
    ds.delete_dataset(A, d)
    assert not list(store.list(keys.dataset_objects_prefix(A, d)))  # class objects too


def test_concurrent_class_appends_get_distinct_ids(store):
    settings = Settings()
    d = DatasetStore(store, settings).create_dataset(A, "d").id
    n = 12
    run_together(
        n,
        lambda k: DatasetStore(store, settings).update_dataset(
            A, d, classes=[{"name": f"class-{k}"}]
        ),
    )
    classes = DatasetStore(store, settings).get_dataset(A, d).classes
    assert [c.id for c in classes] == list(range(1, n + 2))  # 1 (default) + 12 appended
    assert {c.name for c in classes[1:]} == {f"class-{k}" for k in range(n)}  # none lost


def test_label_values_must_be_class_ids(ds, store):
    three = ds.create_dataset(A, "t", classes=[{"name": "a"}, {"name": "b"}, {"name": "c"}]).id
    one = ds.create_dataset(A, "binary").id
    for d in (three, one):
        ds.add_image(A, d, png(0))
    image = ds.list_images(A, three)[0]
    label = np.zeros((H, W), np.uint16)
    label[1:4, 1:4], label[5:8, 5:8], label[9:11, 2:6] = 1, 2, 3
    assert ds.put_label(A, three, image, encode_label_map(label)).version == 1
    np.testing.assert_array_equal(ds.get_label(A, three, image).label_map(), label)
    before = set(store.list(keys.tenant_prefix(A)))
    label[0, 0] = 7
    with pytest.raises(InvalidInput, match="label value 7 is above the dataset's 3 classes"):
        ds.put_label(A, three, image, encode_label_map(label))
    with pytest.raises(InvalidInput, match="above the dataset's 3 classes"):  # 0/255 mask
        ds.put_label(A, three, image, encode_binary_mask(label > 0))
    with pytest.raises(InvalidInput, match="has 1 class"):  # a label map on a binary dataset
        ds.put_label(A, one, image, encode_label_map(np.minimum(label, 3)))
    assert set(store.list(keys.tenant_prefix(A))) == before
    assert ds.put_label(A, one, image, encode_binary_mask(label > 0)).version == 1  # binary ok
