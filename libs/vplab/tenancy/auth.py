"""The one authentication check, shared by the gateway and every gRPC service.

``Authenticator.authenticate("Bearer vpl_...")`` -> ``Tenant`` or ``Unauthenticated``.

* The header is ``Bearer <key>``: scheme case-insensitive, surrounding whitespace ok.
* Error messages say what is wrong (missing, not Bearer, malformed, unknown/revoked) and
  never echo the header or the key.
* The key is hashed (HMAC-SHA256 with the pepper) and looked up by its hash: the object
  name is the hash, so no secret is compared byte by byte against attacker input. The
  stored hash inside the record is still checked with ``hmac.compare_digest``.
* Cache: hash -> tenant for ``cache_ttl_s`` seconds (default 30), bounded in size. A
  revoked key (or deleted tenant) therefore keeps working in a process that has cached
  it for at most ``cache_ttl_s``; ``forget``/``clear_cache`` drop entries earlier.
  Unknown keys are not cached (a new key works at once), and negative lookups cost one
  store read each.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

from vplab.errors import InvalidInput, NotFound, Unauthenticated
from vplab.storage import ArtifactStore, keys
from vplab.tenancy.tenants import Tenant, get_tenant, hash_api_key, is_well_formed_key

AUTH_METADATA_KEY = "authorization"

_MISSING = "missing credentials: send the header 'authorization: Bearer <api key>'"
_SCHEME = "authorization must use the Bearer scheme: 'authorization: Bearer <api key>'"
_MALFORMED = "malformed API key: expected 'vpl_' followed by 43 URL-safe base64 characters"
_INVALID = "invalid API key (unknown or revoked)"


def parse_bearer(authorization: object) -> str:
    """``"Bearer <key>"`` -> the key; ``Unauthenticated`` (without echoing) otherwise."""
    if authorization is None:
        raise Unauthenticated(_MISSING)
    if isinstance(authorization, (bytes, bytearray)):
        try:
            authorization = bytes(authorization).decode("ascii")
        except UnicodeDecodeError:
            raise Unauthenticated(_SCHEME) from None
    if not isinstance(authorization, str):
        raise Unauthenticated(_MISSING)
    parts = authorization.strip().split(None, 1)
    if not parts:
        raise Unauthenticated(_MISSING)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise Unauthenticated(_SCHEME)
    api_key = parts[1].strip()
    if not is_well_formed_key(api_key):
        raise Unauthenticated(_MALFORMED)
    return api_key


class Authenticator:
    def __init__(
        self,
        store: ArtifactStore,
        pepper: str,
        cache_ttl_s: float = 30.0,
        max_cache_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not isinstance(pepper, str) or not pepper:
            raise InvalidInput("api_key_pepper must be a non-empty string")
        self.store = store
        self._pepper = pepper
        self.cache_ttl_s = float(cache_ttl_s)
        self.max_cache_entries = int(max_cache_entries)
        self._clock = clock
        self._cache: OrderedDict[str, tuple[Tenant, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the pepper
        return f"Authenticator({self.store!r}, cache_ttl_s={self.cache_ttl_s})"

    # --- entry points ----------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Tenant:
        """Check an ``authorization`` header value; return the caller's tenant."""
        return self.authenticate_key(parse_bearer(authorization))

    def authenticate_metadata(
        self, metadata: Iterable[tuple[str, str]] | Mapping[str, str] | None
    ) -> Tenant:
        """Same check on gRPC invocation metadata (key ``authorization``, any case).

        Several different ``authorization`` entries are rejected (ambiguous identity).
        """
        items = metadata.items() if isinstance(metadata, Mapping) else (metadata or ())
        values = []
        for item in items:
            try:
                name, value = item[0], item[1]
            except (TypeError, IndexError, KeyError):
                continue
            if isinstance(name, str) and name.lower() == AUTH_METADATA_KEY:
                values.append(value)
        if not values:
            raise Unauthenticated(_MISSING)
        if len(set(map(str, values))) > 1:
            raise Unauthenticated("several different authorization metadata entries sent")
        return self.authenticate(values[0])

    def authenticate_key(self, api_key: str) -> Tenant:
        """Check a bare API key (already extracted from its header)."""
        if not is_well_formed_key(api_key):
            raise Unauthenticated(_MALFORMED)
        key_hash = hash_api_key(api_key, self._pepper)
        cached = self._cached(key_hash)
        if cached is not None:
            return cached
        tenant = self._lookup(key_hash)
        self._remember(key_hash, tenant)
        return tenant

    # --- cache -------------------------------------------------------------------------------

    def forget(self, api_key: str) -> None:
        """Drop one key from this process's cache (e.g. right after revoking it here)."""
        if is_well_formed_key(api_key):
            with self._lock:
                self._cache.pop(hash_api_key(api_key, self._pepper), None)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def _cached(self, key_hash: str) -> Tenant | None:
        now = self._clock()
        with self._lock:
            entry = self._cache.get(key_hash)
            if entry is None:
                return None
            tenant, expires = entry
            if now >= expires:
                del self._cache[key_hash]
                return None
            self._cache.move_to_end(key_hash)
            return tenant

    def _remember(self, key_hash: str, tenant: Tenant) -> None:
        if self.cache_ttl_s <= 0:
            return
        with self._lock:
            self._cache[key_hash] = (tenant, self._clock() + self.cache_ttl_s)
            self._cache.move_to_end(key_hash)
            while len(self._cache) > self.max_cache_entries:
                self._cache.popitem(last=False)

    # --- store lookup ----------------------------------------------------------------------

    def _lookup(self, key_hash: str) -> Tenant:
        try:
            record = self.store.get_json(keys.api_key_record(key_hash))
        except (NotFound, InvalidInput):
            raise Unauthenticated(_INVALID) from None
        if not isinstance(record, dict):
            raise Unauthenticated(_INVALID)
        stored_hash = record.get("key_hash")
        if not isinstance(stored_hash, str) or not hmac.compare_digest(
            stored_hash.encode(), key_hash.encode()
        ):
            raise Unauthenticated(_INVALID)
        tenant_id = record.get("tenant")
        if not isinstance(tenant_id, str):
            raise Unauthenticated(_INVALID)  # a corrupt record: the key is dead
        try:
            return get_tenant(self.store, tenant_id)
        except (NotFound, InvalidInput):
            # The tenant was deleted (or the record is corrupt): the key is dead.
            raise Unauthenticated(_INVALID) from None
