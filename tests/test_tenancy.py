"""Tenants, API keys, the shared Authenticator, quotas and request limits (both stores)."""

from __future__ import annotations

import pytest

from vplab.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    Unauthenticated,
)
from vplab.settings import Settings
from vplab.storage import ArtifactStore, LocalStore, keys
from vplab.tenancy import (
    Authenticator,
    Quotas,
    RequestLimits,
    Tenant,
    create_key,
    create_tenant,
    get_tenant,
    hash_api_key,
    list_keys,
    list_tenants,
    parse_bearer,
    revoke_key,
    rotate_key,
    slugify,
)

PEPPER = "test-pepper"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return request.getfixturevalue("s3_store")


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _all_bytes(store: ArtifactStore) -> dict[str, bytes]:
    return {k: store.get_bytes(k) for k in store.list("")}


# --- tenants and keys -----------------------------------------------------------------------


def test_create_tenant_and_authenticate(store):
    tenant, key = create_tenant(store, "ACME Labs, Inc.", PEPPER)
    assert tenant.id == "acme-labs-inc" and tenant.name == "ACME Labs, Inc."
    assert key.startswith("vpl_") and len(key) == 4 + 43
    auth = Authenticator(store, PEPPER)
    for header in (f"Bearer {key}", f"bearer {key}", f"  BEARER \t {key}  "):
        assert auth.authenticate(header) == tenant
    assert get_tenant(store, "acme-labs-inc") == tenant
    assert list_tenants(store) == [tenant]


def test_only_the_hash_is_stored(store):
    tenant, key = create_tenant(store, "acme", PEPPER)
    key2 = create_key(store, tenant.id, PEPPER)
    contents = _all_bytes(store)
    for k in (key, key2):
        h = hash_api_key(k, PEPPER)
        assert keys.api_key_record(h) in contents
        secret = k[4:]
        assert not any(secret in name for name in contents)
        assert not any(secret.encode() in data for data in contents.values())
        assert not any(k.encode() in data for data in contents.values())
    assert store.get_json(keys.api_key_record(hash_api_key(key, PEPPER)))["tenant"] == "acme"


def test_tenant_ids_unique_and_validated(store):
    create_tenant(store, "Acme", PEPPER)
    with pytest.raises(Conflict, match="already exists"):
        create_tenant(store, "ACME", PEPPER)  # same slug
    other, _ = create_tenant(store, "ACME", PEPPER, tenant_id="acme-2")
    assert other.id == "acme-2"
    with pytest.raises(InvalidInput, match="letters or digits"):
        create_tenant(store, "!!!", PEPPER)
    with pytest.raises(InvalidInput):
        create_tenant(store, "x", PEPPER, tenant_id="../evil")
    with pytest.raises(InvalidInput):
        create_tenant(store, "", PEPPER)
    assert [t.id for t in list_tenants(store)] == ["acme", "acme-2"]
    assert slugify("  Über  Lab__42 ") == "ber-lab-42"
    assert len(slugify("x" * 300)) == 64


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "Token vpl_" + "a" * 43,
        "Bearer vpl_short",
        "Bearer " + "a" * 47,
        "Bearer vpl_" + "a" * 43 + " extra",
        "Bearer vpl_" + "a" * 42 + "!",
        "Bearervpl_" + "a" * 43,
        42,
        b"\xff\xfe",
    ],
)
def test_malformed_headers_rejected_without_echo(tmp_path, header):
    auth = Authenticator(LocalStore(tmp_path), PEPPER)
    with pytest.raises(Unauthenticated) as e:
        auth.authenticate(header)
    # The message never carries the credential part of the header.
    assert "a" * 20 not in e.value.message and "dXNlcjpwYXNz" not in e.value.message
    assert "short" not in e.value.message and "extra" not in e.value.message


def test_unknown_wrong_pepper_and_revoked_keys(store):
    tenant, key = create_tenant(store, "acme", PEPPER)
    auth = Authenticator(store, PEPPER, cache_ttl_s=0)
    with pytest.raises(Unauthenticated, match="unknown or revoked") as e:
        auth.authenticate("Bearer vpl_" + "A" * 43)
    assert "A" * 43 not in e.value.message
    with pytest.raises(Unauthenticated):
        Authenticator(store, "another-pepper").authenticate(f"Bearer {key}")
    assert auth.authenticate(f"Bearer {key}") == tenant
    revoke_key(store, tenant.id, key, PEPPER)
    with pytest.raises(Unauthenticated, match="unknown or revoked") as e:
        auth.authenticate(f"Bearer {key}")
    assert key not in e.value.message and key[4:] not in str(e.value)


def test_revocation_takes_effect_within_cache_ttl(store):
    tenant, key = create_tenant(store, "acme", PEPPER)
    clock = FakeClock()
    auth = Authenticator(store, PEPPER, cache_ttl_s=30, clock=clock)
    assert auth.authenticate(f"Bearer {key}") == tenant
    revoke_key(store, tenant.id, key, PEPPER)
    clock.t += 29
    assert auth.authenticate(f"Bearer {key}") == tenant  # cached
    clock.t += 2
    with pytest.raises(Unauthenticated):
        auth.authenticate(f"Bearer {key}")
    # forget() drops a cached entry at once.
    key2 = create_key(store, tenant.id, PEPPER)
    auth.authenticate(f"Bearer {key2}")
    revoke_key(store, tenant.id, key2, PEPPER)
    auth.forget(key2)
    with pytest.raises(Unauthenticated):
        auth.authenticate(f"Bearer {key2}")


def test_rotate_and_revoke_by_id(store):
    tenant, key = create_tenant(store, "acme", PEPPER)
    other, other_key = create_tenant(store, "globex", PEPPER)
    auth = Authenticator(store, PEPPER, cache_ttl_s=0)
    new = rotate_key(store, tenant.id, PEPPER, old_key=key)
    assert new != key
    assert auth.authenticate(f"Bearer {new}") == tenant
    with pytest.raises(Unauthenticated):
        auth.authenticate(f"Bearer {key}")
    third = create_key(store, tenant.id, PEPPER)
    infos = list_keys(store, tenant.id)
    assert len(infos) == 2 and all(len(i.key_id) == 12 for i in infos)
    third_id = hash_api_key(third, PEPPER)[:12]
    assert third_id in {i.key_id for i in infos}
    # Another tenant cannot revoke our keys, by key or by id: NotFound, nothing changes.
    with pytest.raises(NotFound):
        revoke_key(store, other.id, third, PEPPER)
    with pytest.raises(NotFound):
        revoke_key(store, other.id, third_id, PEPPER)
    assert auth.authenticate(f"Bearer {third}") == tenant
    revoke_key(store, tenant.id, third_id, PEPPER)
    with pytest.raises(Unauthenticated):
        auth.authenticate(f"Bearer {third}")
    with pytest.raises(NotFound):
        revoke_key(store, tenant.id, third, PEPPER)  # already revoked
    with pytest.raises(InvalidInput):
        revoke_key(store, tenant.id, "nonsense", PEPPER)
    with pytest.raises(NotFound):
        create_key(store, "no-such-tenant", PEPPER)
    assert auth.authenticate(f"Bearer {other_key}") == other


def test_authenticate_metadata(tmp_path):
    store = LocalStore(tmp_path)
    tenant, key = create_tenant(store, "acme", PEPPER)
    _, key2 = create_tenant(store, "globex", PEPPER)
    auth = Authenticator(store, PEPPER)
    md = [("x-model-id", "m1"), ("authorization", f"Bearer {key}")]
    assert auth.authenticate_metadata(md) == tenant
    assert auth.authenticate_metadata(tuple(md)) == tenant
    assert auth.authenticate_metadata({"Authorization": f"bearer {key}"}) == tenant
    assert auth.authenticate_metadata(md + [("authorization", f"Bearer {key}")]) == tenant
    import grpc.aio  # what a grpc.aio servicer's context.invocation_metadata() returns

    assert auth.authenticate_metadata(grpc.aio.Metadata(*md)) == tenant
    with pytest.raises(Unauthenticated, match="missing"):
        auth.authenticate_metadata([("x-model-id", "m1")])
    with pytest.raises(Unauthenticated, match="missing"):
        auth.authenticate_metadata(None)
    with pytest.raises(Unauthenticated, match="several"):
        auth.authenticate_metadata(md + [("authorization", f"Bearer {key2}")])
    with pytest.raises(Unauthenticated, match="Bearer"):
        auth.authenticate_metadata({"authorization": key})


def test_parse_bearer_and_deleted_tenant(tmp_path):
    store = LocalStore(tmp_path)
    tenant, key = create_tenant(store, "acme", PEPPER)
    assert parse_bearer(f" Bearer  {key} ") == key
    store.delete(keys.tenant_record(tenant.id))
    with pytest.raises(Unauthenticated):
        Authenticator(store, PEPPER).authenticate(f"Bearer {key}")
    with pytest.raises(InvalidInput):
        Authenticator(store, "")
    assert PEPPER not in repr(Authenticator(store, PEPPER))
    assert isinstance(tenant, Tenant)


# --- quotas and limits ----------------------------------------------------------------------


def test_request_limits():
    q = RequestLimits(
        Settings(max_points_per_request=3, max_targets_per_call=2, max_image_bytes=10)
    )
    q.check_points(3)
    with pytest.raises(PayloadTooLarge, match=r"4.*limit is 3.*max_points_per_request"):
        q.check_points(4)
    q.check_targets(2)
    with pytest.raises(PayloadTooLarge, match=r"3.*limit is 2.*max_targets_per_call"):
        q.check_targets(3)
    q.check_references(2)
    with pytest.raises(PayloadTooLarge, match=r"references.*limit is 2"):
        q.check_references(3)
    with pytest.raises(PayloadTooLarge, match="max_image_bytes"):
        q.check_image_bytes(11)
    with pytest.raises(InvalidInput):
        q.check_points(-1)
    with pytest.raises(InvalidInput):
        q.check_points(True)


def test_image_usage_and_quota(store):
    settings = Settings(quota_images=2, quota_bytes=100)
    q = Quotas(store, settings)
    store.put_bytes(keys.image("t1", "ab" * 32), b"x" * 30)
    store.put_bytes(keys.image("t2", "ab" * 32), b"x" * 99)  # another tenant: not counted
    store.put_bytes(keys.dataset("t1", "d1"), b"{}")  # not an image: not counted
    u = q.usage("t1")
    assert (u.images, u.bytes) == (1, 30)
    q.check_new_image("t1", 70)
    with pytest.raises(QuotaExceeded, match=r"30 bytes.*71.*limit of 100.*quota_bytes"):
        q.check_new_image("t1", 71)
    with q.reserve_image("t1", 10):
        with pytest.raises(QuotaExceeded, match=r"2 images.*limit is 2.*quota_images"):
            q.check_new_image("t1", 1)
        store.put_bytes(keys.image("t1", "cd" * 32), b"y" * 10)
    assert q.usage("t1").images == 2  # cached figures include our own upload
    with pytest.raises(QuotaExceeded, match="quota_images"):
        q.check_new_image("t1", 1)
    # A failed upload releases its reservation.
    q.forget_usage("t1")
    store.delete(keys.image("t1", "cd" * 32))
    with pytest.raises(RuntimeError), q.reserve_image("t1", 10):
        raise RuntimeError("upload failed")
    q.check_new_image("t1", 10)
    assert q.usage("t1", fresh=True).images == 1


def test_usage_is_cached_briefly(tmp_path):
    store = LocalStore(tmp_path)
    clock = FakeClock()
    q = Quotas(store, Settings(), usage_ttl_s=5, clock=clock)
    assert q.usage("t1").images == 0
    store.put_bytes(keys.image("t1", "ab" * 32), b"x")
    assert q.usage("t1").images == 0
    clock.t += 6
    assert q.usage("t1").images == 1


def test_concurrent_jobs_quota(store):
    q = Quotas(store, Settings(quota_concurrent_jobs=2))
    q.check_concurrent_jobs("t1")
    for job, state in [
        ("j1", "RUNNING"),
        ("j2", "SUCCEEDED"),
        ("j3", "FAILED"),
        ("j4", "CANCELLED"),
    ]:
        store.put_json(keys.job_state("t1", job), {"state": state})
    store.put_json(keys.job_state("t2", "j9"), {"state": "RUNNING"})  # other tenant
    store.put_bytes(keys.job_events("t1", "j2"), b'{"state": "RUNNING"}\n')  # not a record
    assert q.active_jobs("t1") == 1
    q.check_concurrent_jobs("t1")
    store.put_json(keys.job_state("t1", "j5"), {"state": "QUEUED"})
    with pytest.raises(QuotaExceeded, match=r"2 queued or running.*limit is 2"):
        q.check_concurrent_jobs("t1")
    store.put_json(keys.job_state("t1", "j5"), {"state": "SUCCEEDED"})
    q.check_concurrent_jobs("t1")
