"""Tenants and their API keys (registry under ``system/`` in the object store).

* A tenant record lives at ``system/tenants/{id}.json``. The id is a slug of the name
  (lowercase ``[a-z0-9_-]``, at most 64 chars, validated by ``keys.check_id``), or an
  explicit ``tenant_id``. Ids are unique: creating a second tenant whose slug is taken
  raises ``Conflict`` (no silent suffix: an operator should notice and pick a name). The
  check-then-write is not a transaction (the store has no conditional PUT); tenant
  creation is a rare admin operation, not run concurrently for one name.
* An API key is ``"vpl_" + secrets.token_urlsafe(32)``, shown once to the caller. Only
  ``HMAC-SHA256(pepper, key)`` (hex) is stored, as the object name
  ``system/api-keys/{hash}.json`` -> ``{"tenant", "key_id", "key_hash", "created_at"}``.
  ``key_id`` (the first 12 hex chars of the hash) names a key in listings and for
  revocation without revealing it.
* Revoking deletes the key's record; running ``Authenticator`` caches forget it within
  their TTL (see ``vplab.tenancy.auth``).

All writes are single ``put_json`` calls, atomic in both stores.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from vplab.errors import Conflict, InvalidInput, NotFound
from vplab.storage import ArtifactStore, keys

KEY_PREFIX = "vpl_"
_KEY_BYTES = 32
# token_urlsafe(32) is 43 chars of the URL-safe base64 alphabet (no padding).
API_KEY_RE = re.compile(r"vpl_[A-Za-z0-9_-]{43}")
_KEY_ID_LEN = 12
_KEY_ID_RE = re.compile(r"[0-9a-f]{12}")
_MAX_NAME = 200


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    created_at: str


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: never the key, never the full hash."""

    key_id: str
    tenant: str
    created_at: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _pepper_bytes(pepper: str) -> bytes:
    if not isinstance(pepper, str) or not pepper:
        raise InvalidInput("api_key_pepper must be a non-empty string")
    return pepper.encode()


def hash_api_key(api_key: str, pepper: str) -> str:
    """HMAC-SHA256(pepper, key) as lowercase hex: the only form in which keys are stored."""
    return hmac.new(_pepper_bytes(pepper), api_key.encode(), hashlib.sha256).hexdigest()


def is_well_formed_key(api_key: object) -> bool:
    return isinstance(api_key, str) and API_KEY_RE.fullmatch(api_key) is not None


def slugify(name: str) -> str:
    """``"ACME Labs, Inc."`` -> ``"acme-labs-inc"`` (a valid id, at most 64 chars)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64].rstrip("-")
    return slug


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("tenant name must be a non-empty string")
    name = name.strip()
    if len(name) > _MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInput(f"tenant name must be at most {_MAX_NAME} printable characters")
    return name


def _tenant_from(data: object, tenant_id: str) -> Tenant:
    if not isinstance(data, dict):
        raise InvalidInput(f"tenant record {tenant_id!r} is corrupt")
    return Tenant(
        id=tenant_id,
        name=str(data.get("name", tenant_id)),
        created_at=str(data.get("created_at", "")),
    )


# --- tenants -------------------------------------------------------------------------------


def create_tenant(
    store: ArtifactStore, name: str, pepper: str, tenant_id: str | None = None
) -> tuple[Tenant, str]:
    """Create a tenant and its first API key; return ``(tenant, api_key)``.

    The id is ``tenant_id`` if given, else the slug of ``name``. ``Conflict`` if taken,
    ``InvalidInput`` if the name has no usable characters for an id.
    """
    name = _check_name(name)
    _pepper_bytes(pepper)
    if tenant_id is None:
        tenant_id = slugify(name)
        if not tenant_id:
            raise InvalidInput(
                "tenant name must contain letters or digits (the tenant id is derived "
                "from it); or pass an explicit tenant id"
            )
    record_key = keys.tenant_record(keys.check_id(tenant_id, "tenant id"))
    if store.exists(record_key):
        raise Conflict(f"tenant {tenant_id!r} already exists; choose another name or id")
    tenant = Tenant(id=tenant_id, name=name, created_at=_now())
    store.put_json(
        record_key, {"id": tenant.id, "name": tenant.name, "created_at": tenant.created_at}
    )
    return tenant, create_key(store, tenant.id, pepper)


def get_tenant(store: ArtifactStore, tenant_id: str) -> Tenant:
    try:
        data = store.get_json(keys.tenant_record(keys.check_id(tenant_id, "tenant id")))
    except NotFound:
        raise NotFound(f"tenant {tenant_id!r} not found") from None
    return _tenant_from(data, tenant_id)


def list_tenants(store: ArtifactStore) -> list[Tenant]:
    tenants = []
    for key in store.list(keys.tenant_records_prefix()):
        tenant_id = keys.parse_tenant_record(key)
        if tenant_id is None:
            continue
        try:
            tenants.append(get_tenant(store, tenant_id))
        except (NotFound, InvalidInput):
            continue  # deleted meanwhile, or not a tenant record
    return sorted(tenants, key=lambda t: t.id)


# --- API keys ------------------------------------------------------------------------------


def create_key(store: ArtifactStore, tenant_id: str, pepper: str) -> str:
    """A new API key for an existing tenant (``NotFound`` otherwise). Returned once."""
    get_tenant(store, tenant_id)
    api_key = KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)
    key_hash = hash_api_key(api_key, pepper)
    store.put_json(
        keys.api_key_record(key_hash),
        {
            "tenant": tenant_id,
            "key_id": key_hash[:_KEY_ID_LEN],
            "key_hash": key_hash,
            "created_at": _now(),
        },
    )
    return api_key


def list_keys(store: ArtifactStore, tenant_id: str) -> list[KeyInfo]:
    """The tenant's keys (ids and dates only). Scans the key registry: an admin operation."""
    keys.check_id(tenant_id, "tenant id")
    out = []
    for key in store.list(keys.api_key_records_prefix()):
        try:
            data = store.get_json(key)
        except (NotFound, InvalidInput):
            continue
        if isinstance(data, dict) and data.get("tenant") == tenant_id:
            out.append(
                KeyInfo(
                    key_id=str(data.get("key_id", "")),
                    tenant=tenant_id,
                    created_at=str(data.get("created_at", "")),
                )
            )
    return sorted(out, key=lambda k: (k.created_at, k.key_id))


def _find_key_record(store: ArtifactStore, tenant_id: str, key: str, pepper: str) -> str:
    """The record key of ``key`` (a full API key or a key id) owned by ``tenant_id``."""
    keys.check_id(tenant_id, "tenant id")
    if is_well_formed_key(key):
        record = keys.api_key_record(hash_api_key(key, pepper))
        candidates = [record] if store.exists(record) else []
    elif isinstance(key, str) and _KEY_ID_RE.fullmatch(key):
        candidates = [
            k
            for k in store.list(keys.api_key_records_prefix())
            if (keys.parse_api_key_record(k) or "").startswith(key)
        ]
    else:
        raise InvalidInput("expected an API key ('vpl_...') or a 12-hex-character key id")
    for record in candidates:
        try:
            data = store.get_json(record)
        except NotFound:
            continue
        if isinstance(data, dict) and data.get("tenant") == tenant_id:
            return record
    # Same answer for unknown keys and other tenants' keys.
    raise NotFound(f"no such API key for tenant {tenant_id!r}")


def revoke_key(store: ArtifactStore, tenant_id: str, key: str, pepper: str) -> None:
    """Revoke one of the tenant's keys, given as the key itself or its ``key_id``.

    The record is deleted; processes that cached it keep accepting the key for at most
    their ``Authenticator`` cache TTL.
    """
    store.delete(_find_key_record(store, tenant_id, key, pepper))


def rotate_key(
    store: ArtifactStore, tenant_id: str, pepper: str, old_key: str | None = None
) -> str:
    """Create a new key, then revoke ``old_key`` (key or key id) if given. New key first,
    so the tenant is never left without a working key."""
    if old_key is not None:
        _find_key_record(store, tenant_id, old_key, pepper)  # fail before creating
    new_key = create_key(store, tenant_id, pepper)
    if old_key is not None:
        revoke_key(store, tenant_id, old_key, pepper)
    return new_key
