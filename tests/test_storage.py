"""ArtifactStore contract, run against LocalStore and S3Store (moto + real minio client)."""

from __future__ import annotations

import os
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from vplab.errors import InvalidInput, NotFound
from vplab.settings import Settings
from vplab.storage import ArtifactStore, LocalStore, S3Store, keys, open_store
from vplab.storage._atomic import TMP_PREFIX

SHA = "ab" * 32
SHA2 = "cd" * 32


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return request.getfixturevalue("s3_store")


# --- contract, both stores ----------------------------------------------------------------


def test_bytes_round_trip_and_overwrite(store):
    key = keys.image("t1", SHA)
    store.put_bytes(key, b"one")
    assert store.get_bytes(key) == b"one"
    assert store.exists(key)
    assert store.size(key) == 3
    store.put_bytes(key, b"second version")
    assert store.get_bytes(key) == b"second version"
    assert store.size(key) == 14


def test_create_bytes_only_creates(store):
    key = keys.label("t1", "d1", SHA, 1)
    assert store.create_bytes(key, b"first", content_type="image/png") is True
    assert store.create_bytes(key, b"second") is False  # exists: nothing changes
    assert store.get_bytes(key) == b"first"
    assert store.list("tenants/t1/") == [key]  # no temp files left behind


def test_concurrent_creators_exactly_one_wins(store):
    import threading

    key = keys.label("t1", "d1", SHA, 7)
    results: list[tuple[int, bool]] = []
    barrier = threading.Barrier(16)

    def creator(i: int) -> None:
        barrier.wait()
        results.append((i, store.create_bytes(key, f"writer {i}".encode())))

    threads = [threading.Thread(target=creator, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [i for i, won in results if won]
    assert len(results) == 16 and len(winners) == 1
    assert store.get_bytes(key) == f"writer {winners[0]}".encode()


def test_empty_and_binary_objects(store):
    store.put_bytes("a/empty", b"")
    assert store.get_bytes("a/empty") == b""
    assert store.size("a/empty") == 0
    blob = bytes(range(256)) * 1000
    store.put_bytes("a/blob", blob)
    assert store.get_bytes("a/blob") == blob


def test_missing_objects_raise_not_found(store):
    key = keys.image("t1", SHA)
    assert not store.exists(key)
    with pytest.raises(NotFound, match="not found"):
        store.get_bytes(key)
    with pytest.raises(NotFound):
        store.size(key)
    with pytest.raises(NotFound):
        store.get_json(keys.dataset("t1", "d1"))
    with pytest.raises(NotFound):
        store.presigned_get_url(key, timedelta(minutes=5))


def test_prefix_directory_is_not_an_object(store):
    store.put_bytes("x/y/z", b"1")
    assert not store.exists("x/y")
    with pytest.raises(NotFound):
        store.get_bytes("x/y")


def test_list_is_recursive_sorted_and_prefix_scoped(store):
    written = [
        keys.image("t1", SHA2),
        keys.image("t1", SHA),
        keys.dataset("t1", "d1"),
        keys.label("t1", "d1", SHA, 0),
        keys.label("t1", "d1", SHA, 1),
        keys.image("t2", SHA),
        keys.image("t10", SHA),
    ]
    for k in written:
        store.put_bytes(k, b"x")
    assert store.list() == sorted(written)
    # "tenants/t1/" must not match tenant t10.
    assert store.list(keys.tenant_prefix("t1")) == sorted(written[:5])
    assert store.list(keys.images_prefix("t1")) == sorted(written[:2])
    assert store.list(keys.image_labels_prefix("t1", "d1", SHA)) == [
        keys.label("t1", "d1", SHA, 0),
        keys.label("t1", "d1", SHA, 1),
    ]
    # A partial last segment works like S3 prefixes do.
    assert store.list("tenants/t1") == sorted(written[:5] + [written[6]])
    assert store.list("tenants/nobody/") == []


def test_delete_is_idempotent(store):
    store.put_bytes("k/a", b"1")
    store.delete("k/a")
    assert not store.exists("k/a")
    store.delete("k/a")  # again: no error
    store.delete("never/existed")


def test_delete_prefix(store):
    job = keys.job_prefix("t1", "j1")
    for step in (0, 10):
        store.put_bytes(keys.job_ckpt("t1", "j1", step), b"w")
    store.put_json(keys.job_state("t1", "j1"), {"status": "running"})
    store.put_bytes(keys.job_state("t1", "j10"), b"{}")
    assert store.delete_prefix(job) == 3
    assert store.list(job) == []
    assert store.list(keys.jobs_prefix("t1")) == [keys.job_state("t1", "j10")]
    assert store.delete_prefix(job) == 0


def test_json_helpers(store):
    key = keys.dataset("t1", "d1")
    obj = {"images": [SHA], "classes": ["cell"], "n": 3, "ratio": 0.5, "ok": True, "none": None}
    store.put_json(key, obj)
    assert store.get_json(key) == obj
    store.put_bytes(key, b"{not json")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        store.get_json(key)


def test_file_round_trip(store, tmp_path):
    src = tmp_path / "src.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(payload)
    key = keys.job_ckpt("t1", "j1", 5)
    store.put_file(key, src)
    assert store.size(key) == len(payload)
    dest = tmp_path / "out" / "nested" / "ckpt.safetensors"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"old")
    store.get_file(key, dest)
    assert dest.read_bytes() == payload
    assert [p.name for p in dest.parent.iterdir()] == ["ckpt.safetensors"]  # no temp left


def test_get_file_missing_leaves_destination_alone(store, tmp_path):
    dest = tmp_path / "keep.bin"
    dest.write_bytes(b"keep")
    with pytest.raises(NotFound):
        store.get_file("no/such", dest)
    assert dest.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.bin"] + (
        ["store"] if isinstance(store, LocalStore) else []
    )


BAD_KEYS = [
    "",
    "/etc/passwd",
    "../escape",
    "a/../../escape",
    "a/./b",
    "a//b",
    "a/b/",
    "a\\b",
    "a/\x00b",
    None,
    b"bytes/key",
]


@pytest.mark.parametrize("bad", BAD_KEYS)
def test_bad_keys_rejected(store, bad):
    with pytest.raises(InvalidInput):
        store.put_bytes(bad, b"x")
    with pytest.raises(InvalidInput):
        store.get_bytes(bad)
    with pytest.raises(InvalidInput):
        store.exists(bad)
    with pytest.raises(InvalidInput):
        store.delete(bad)


@pytest.mark.parametrize("bad", ["../", "/abs/", "a//", "a\\b/", None])
def test_bad_prefixes_rejected(store, bad):
    with pytest.raises(InvalidInput):
        store.list(bad)
    with pytest.raises(InvalidInput):
        store.delete_prefix(bad)


def test_non_bytes_data_rejected(store):
    with pytest.raises(InvalidInput, match="must be bytes"):
        store.put_bytes("a/b", "text")  # type: ignore[arg-type]


def test_presign_expiry_validated(store):
    store.put_bytes("a/b", b"x")
    for bad in (timedelta(0), timedelta(days=8), 3600):
        with pytest.raises(InvalidInput, match="expires"):
            store.presigned_get_url("a/b", bad)  # type: ignore[arg-type]


def test_presigned_url_downloads(store):
    key = keys.model_adapter("t1", "m1")
    store.put_bytes(key, b"adapter-bytes")
    url = store.presigned_get_url(key, timedelta(minutes=5))
    with urllib.request.urlopen(url, timeout=10) as r:  # file:// for local, http:// for S3
        assert r.read() == b"adapter-bytes"


# --- LocalStore specifics -------------------------------------------------------------------


def test_local_failed_write_keeps_old_content_and_no_temp(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    key = keys.dataset("t1", "d1")
    store.put_bytes(key, b"old")

    def boom(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk on fire"):
        store.put_bytes(key, b"new content that must never be seen")
    monkeypatch.undo()
    assert store.get_bytes(key) == b"old"
    assert store.list() == [key]
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert leftovers == []


def test_local_failed_put_file_keeps_old_content(tmp_path):
    store = LocalStore(tmp_path / "s")
    store.put_bytes("m/a", b"old")
    with pytest.raises(FileNotFoundError):
        store.put_file("m/a", tmp_path / "missing.bin")
    assert store.get_bytes("m/a") == b"old"
    assert store.list() == ["m/a"]


def test_local_list_hides_in_flight_temp_files(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("a/b", b"1")
    (tmp_path / "a" / f"{TMP_PREFIX}crashed").write_bytes(b"partial")
    assert store.list() == ["a/b"]
    with pytest.raises(InvalidInput):
        store.get_bytes(f"a/{TMP_PREFIX}crashed")


def test_local_keys_stay_under_root(tmp_path):
    root = tmp_path / "root"
    store = LocalStore(root)
    (tmp_path / "secret").write_bytes(b"s")
    with pytest.raises(InvalidInput):
        store.get_bytes("../secret")
    store.put_bytes("a/b.txt", b"x")
    assert (root / "a" / "b.txt").read_bytes() == b"x"
    assert store.presigned_get_url("a/b.txt").startswith("file://")
    assert (
        Path(urllib.request.url2pathname(store.presigned_get_url("a/b.txt")[7:]))
        == (root / "a" / "b.txt").resolve()
    )


def test_local_file_vs_prefix_conflict(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("a/b", b"1")
    with pytest.raises(InvalidInput, match="conflicts"):
        store.put_bytes("a/b/c", b"2")
    with pytest.raises(InvalidInput, match="conflicts"):
        store.put_bytes("a", b"3")
    assert store.list() == ["a/b"]


def test_local_delete_prefix_prunes_dirs(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes(keys.model_config("t1", "m1"), b"{}")
    store.delete_prefix(keys.model_prefix("t1", "m1"))
    assert not (tmp_path / "tenants" / "t1" / "models" / "m1").exists()
    store.put_bytes(keys.model_config("t1", "m1"), b"{}")  # writable again
    assert store.list() == [keys.model_config("t1", "m1")]


# --- S3Store specifics / factory ------------------------------------------------------------


def test_s3_bucket_created_once_and_reused(s3_server):
    kw = dict(
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        bucket="reuse-bucket",
    )
    S3Store(**kw).put_bytes("a/b", b"1")
    again = S3Store(**kw)
    assert again.get_bytes("a/b") == b"1"
    assert again.client.bucket_exists("reuse-bucket")


def test_open_store_picks_backend(tmp_path, s3_server):
    local = open_store(Settings(data_dir=tmp_path / "data"))
    assert isinstance(local, LocalStore) and local.root == (tmp_path / "data").resolve()
    s3 = open_store(
        Settings(
            s3_endpoint=s3_server.endpoint,
            s3_access_key=s3_server.access_key,
            s3_secret_key=s3_server.secret_key,
            s3_bucket="factory-bucket",
        )
    )
    assert isinstance(s3, S3Store) and s3.bucket == "factory-bucket"
    s3.put_bytes("x/y", b"z")
    assert s3.get_bytes("x/y") == b"z"


# --- keys -----------------------------------------------------------------------------------


def test_keys_layout():
    assert keys.base_model("vit_b", SHA) == f"base-models/vit_b/{SHA}.pth"
    assert keys.image("t1", SHA) == f"tenants/t1/images/{SHA}"
    assert keys.dataset("t1", "cells-2") == "tenants/t1/datasets/cells-2.json"
    assert keys.label("t1", "d1", SHA, 3) == f"tenants/t1/labels/d1/{SHA}/v3.png"
    assert keys.embedding("t1", "sam-vit_b.lora-r4", SHA) == (
        f"tenants/t1/cache/sam-vit_b.lora-r4/{SHA}.safetensors"
    )
    assert keys.job_state("t1", "j1") == "tenants/t1/jobs/j1/state.json"
    assert keys.job_events("t1", "j1") == "tenants/t1/jobs/j1/events.jsonl"
    assert keys.job_ckpt("t1", "j1", 200) == "tenants/t1/jobs/j1/ckpt/step-200.safetensors"
    assert keys.model_adapter("t1", "m1") == "tenants/t1/models/m1/adapter.safetensors"
    assert keys.model_config("t1", "m1") == "tenants/t1/models/m1/config.json"
    assert keys.tenant_record("t1") == "system/tenants/t1.json"
    assert keys.api_key_record("0f" * 32) == f"system/api-keys/{'0f' * 32}.json"


def test_key_prefixes():
    assert keys.tenant_prefix("t1") == "tenants/t1/"
    assert keys.images_prefix("t1") == "tenants/t1/images/"
    assert keys.job_prefix("t1", "j1") == "tenants/t1/jobs/j1/"
    assert keys.job_ckpt_prefix("t1", "j1") == "tenants/t1/jobs/j1/ckpt/"
    assert keys.model_prefix("t1", "m1") == "tenants/t1/models/m1/"
    assert keys.image_labels_prefix("t1", "d1", SHA) == f"tenants/t1/labels/d1/{SHA}/"
    assert keys.cache_prefix("t1") == "tenants/t1/cache/"
    assert keys.cache_prefix("t1", "enc.v1") == "tenants/t1/cache/enc.v1/"
    # Every key a helper builds is accepted by the stores' own key check.
    from vplab.storage import check_key, check_prefix

    check_key(keys.label("t1", "d1", SHA, 0))
    check_prefix(keys.job_prefix("t1", "j1"))


@pytest.mark.parametrize(
    "bad",
    ["", "..", "../t2", "a/b", "T1", "-lead", "_lead", "a.b", "a b", "x" * 65, "t1\n", 5, None],
)
def test_bad_ids_rejected_naming_the_field(bad):
    with pytest.raises(InvalidInput, match="tenant"):
        keys.tenant_prefix(bad)
    with pytest.raises(InvalidInput, match="job"):
        keys.job_state("t1", bad)
    with pytest.raises(InvalidInput, match="dataset"):
        keys.dataset("t1", bad)
    with pytest.raises(InvalidInput, match="model"):
        keys.model_adapter("t1", bad)


def test_id_length_limits():
    assert keys.tenant_prefix("a" * 64) == f"tenants/{'a' * 64}/"
    assert keys.tenant_prefix("0") == "tenants/0/"


@pytest.mark.parametrize("bad", ["AB" * 32, "ab" * 31, "ab" * 33, "g" * 64, "../" + "a" * 61, None])
def test_bad_sha256_rejected(bad):
    with pytest.raises(InvalidInput, match="sha256"):
        keys.image("t1", bad)


@pytest.mark.parametrize("bad", ["", ".", "..", "a..b", ".a", "a.", "a/b", "A", "a b", "x" * 129])
def test_bad_encoder_ids_rejected(bad):
    with pytest.raises(InvalidInput, match="encoder_id"):
        keys.embedding("t1", bad, SHA)


@pytest.mark.parametrize("bad", [-1, 1.0, "1", True, None])
def test_bad_versions_and_steps_rejected(bad):
    with pytest.raises(InvalidInput, match="label version"):
        keys.label("t1", "d1", SHA, bad)
    with pytest.raises(InvalidInput, match="checkpoint step"):
        keys.job_ckpt("t1", "j1", bad)


def test_parse_version_and_step():
    assert keys.parse_label_version(keys.label("t1", "d1", SHA, 0)) == 0
    assert keys.parse_label_version(keys.label("t1", "d1", SHA, 12)) == 12
    assert keys.parse_ckpt_step(keys.job_ckpt("t1", "j1", 4000)) == 4000
    for bad in [
        "tenants/t1/labels/d1/x/v1.png.bak",
        "v1.png",
        f"tenants/t1/images/{SHA}",
        "tenants/t1/labels/d1/x/v01.png",
    ]:
        with pytest.raises(InvalidInput, match="label key"):
            keys.parse_label_version(bad)
    with pytest.raises(InvalidInput, match="checkpoint key"):
        keys.parse_ckpt_step("tenants/t1/jobs/j1/state.json")
    listing = [keys.label("t1", "d1", SHA, v) for v in (0, 2, 10)]
    assert keys.latest_label_version(sorted(listing)) == 10  # numeric, not lexicographic
    assert keys.latest_label_version([]) is None
    assert keys.latest_ckpt_step([keys.job_ckpt("t1", "j", s) for s in (9, 100)]) == 100
