"""Per-tenant quotas (429 ``QuotaExceeded``); per-request limits are ``limits.RequestLimits``.

Usage is computed from the store, never from a counter that could drift:

* images / stored bytes: the objects under ``tenants/{t}/images/`` and their sizes
  (image bytes only; labels, embeddings and checkpoints are not counted). The listing is
  cached for ``usage_ttl_s`` seconds per tenant; uploads through this process update the
  cached figures at once, and an in-process reservation makes check+upload atomic for
  threads of one process. Across replicas the quota is soft: it can be overshot by the
  uploads that run concurrently on other replicas within one cache period.
* concurrent jobs: job records ``tenants/{t}/jobs/{job}/state.json`` whose ``state`` is
  QUEUED or RUNNING (read fresh on every check; job starts are rare).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vplab.errors import InvalidInput, NotFound, QuotaExceeded
from vplab.settings import Settings
from vplab.states import ACTIVE_STATES
from vplab.storage import ArtifactStore, check_prefix, keys


@dataclass(frozen=True)
class Usage:
    images: int
    bytes: int


def object_sizes(store: ArtifactStore, prefix: str) -> dict[str, int]:
    """``{key: size}`` under ``prefix`` using one listing where the store allows it."""
    list_sizes = getattr(store, "list_sizes", None)
    if callable(list_sizes):  # if the store interface grows one
        return dict(list_sizes(prefix))
    client, bucket = getattr(store, "client", None), getattr(store, "bucket", None)
    if client is not None and bucket is not None and hasattr(client, "list_objects"):
        # S3: ListObjectsV2 returns sizes; no HEAD per object.
        check_prefix(prefix)
        return {
            o.object_name: int(o.size or 0)
            for o in client.list_objects(bucket, prefix=prefix or None, recursive=True)
            if not o.is_dir
        }
    sizes = {}
    for key in store.list(prefix):
        with contextlib.suppress(NotFound):  # deleted between list and stat
            sizes[key] = store.size(key)
    return sizes


class Quotas:
    def __init__(
        self,
        store: ArtifactStore,
        settings: Settings,
        usage_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.settings = settings
        self.usage_ttl_s = float(usage_ttl_s)
        self._clock = clock
        self._lock = threading.Lock()
        # tenant -> (usage from the store + our own uploads since, expiry time)
        self._usage: dict[str, tuple[Usage, float]] = {}
        # tenant -> uploads checked but not yet written (held under the lock)
        self._pending: dict[str, Usage] = {}

    # --- storage quotas (429) --------------------------------------------------------------

    def usage(self, tenant: str, fresh: bool = False) -> Usage:
        """Images and image bytes stored for ``tenant`` (cached ``usage_ttl_s``)."""
        keys.check_id(tenant, "tenant")
        now = self._clock()
        with self._lock:
            entry = self._usage.get(tenant)
            if entry is not None and not fresh and now < entry[1]:
                return entry[0]
        sizes = object_sizes(self.store, keys.images_prefix(tenant))
        # Prediction and evaluation results count towards the bytes too (they grow with
        # every run).
        predicted = sum(
            sum(object_sizes(self.store, keys.jobs_prefix(tenant, folder)).values())
            for folder in (keys.PREDICTIONS, keys.EVALUATIONS)
        )
        usage = Usage(images=len(sizes), bytes=sum(sizes.values()) + predicted)
        with self._lock:
            self._usage[tenant] = (usage, self._clock() + self.usage_ttl_s)
        return usage

    def check_new_bytes(self, tenant: str, n_bytes: int) -> None:
        """Raise ``QuotaExceeded`` if storing ``n_bytes`` more (not an image: a prediction
        result) would go over the byte quota; counts them as stored when it does not."""
        usage = self.usage(tenant)
        with self._lock:
            pending = self._pending.get(tenant, Usage(0, 0))
        stored = usage.bytes + pending.bytes
        if stored + n_bytes > self.settings.quota_bytes or (
            n_bytes == 0 and stored >= self.settings.quota_bytes
        ):
            raise QuotaExceeded(
                f"storage quota exceeded: tenant {tenant!r} stores {stored} bytes, adding "
                f"{n_bytes} would exceed the limit of {self.settings.quota_bytes} bytes "
                f"(quota_bytes)"
            )
        with self._lock:
            entry = self._usage.get(tenant)
            if entry is not None:
                u, expires = entry
                self._usage[tenant] = (Usage(u.images, u.bytes + n_bytes), expires)

    def check_new_image(self, tenant: str, n_bytes: int) -> None:
        """Raise ``QuotaExceeded`` if one more image of ``n_bytes`` would go over a quota."""
        with self._lock:
            pending = self._pending.get(tenant, Usage(0, 0))
        self._check(tenant, self.usage(tenant), pending, n_bytes)

    @contextlib.contextmanager
    def reserve_image(self, tenant: str, n_bytes: int) -> Iterator[None]:
        """Check the quotas for one new image and hold the room while it is written.

        On clean exit the image counts as stored; on error the room is released.
        """
        usage = self.usage(tenant)
        with self._lock:
            pending = self._pending.get(tenant, Usage(0, 0))
            self._check(tenant, usage, pending, n_bytes)
            self._pending[tenant] = Usage(pending.images + 1, pending.bytes + n_bytes)
        ok = False
        try:
            yield
            ok = True
        finally:
            with self._lock:
                p = self._pending[tenant]
                p = Usage(p.images - 1, p.bytes - n_bytes)
                if p.images:
                    self._pending[tenant] = p
                else:
                    self._pending.pop(tenant, None)
                entry = self._usage.get(tenant)
                if ok and entry is not None:
                    u, expires = entry
                    self._usage[tenant] = (Usage(u.images + 1, u.bytes + n_bytes), expires)

    def forget_usage(self, tenant: str | None = None) -> None:
        """Drop cached usage (e.g. after deleting images) so the next check re-lists."""
        with self._lock:
            if tenant is None:
                self._usage.clear()
            else:
                self._usage.pop(tenant, None)

    def _check(self, tenant: str, usage: Usage, pending: Usage, n_bytes: int) -> None:
        images = usage.images + pending.images
        if images + 1 > self.settings.quota_images:
            raise QuotaExceeded(
                f"image quota exceeded: tenant {tenant!r} has {images} images, the limit "
                f"is {self.settings.quota_images} (quota_images)"
            )
        stored = usage.bytes + pending.bytes
        if stored + n_bytes > self.settings.quota_bytes:
            raise QuotaExceeded(
                f"storage quota exceeded: tenant {tenant!r} stores {stored} bytes, adding "
                f"{n_bytes} would exceed the limit of {self.settings.quota_bytes} bytes "
                f"(quota_bytes)"
            )

    # --- jobs ----------------------------------------------------------------------------------

    def active_jobs(self, tenant: str) -> int:
        """Jobs of ``tenant`` in QUEUED or RUNNING (training jobs and prediction runs), read
        from their state records."""
        count = 0
        records = [
            key
            for folder in keys.JOB_FOLDERS
            for key in self.store.list(keys.jobs_prefix(tenant, folder))
            if keys.parse_job_state(key, tenant, folder) is not None
        ]
        for key in records:
            try:
                record = self.store.get_json(key)
            except (NotFound, InvalidInput):
                continue  # deleted meanwhile, or a torn/corrupt record: not counted
            if isinstance(record, dict) and record.get("state") in ACTIVE_STATES:
                count += 1
        return count

    def check_concurrent_jobs(self, tenant: str) -> None:
        """Raise ``QuotaExceeded`` if the tenant cannot start one more job now."""
        active = self.active_jobs(tenant)
        limit = self.settings.quota_concurrent_jobs
        if active + 1 > limit:
            raise QuotaExceeded(
                f"concurrent job quota exceeded: tenant {tenant!r} has {active} queued or "
                f"running jobs, the limit is {limit} (quota_concurrent_jobs)"
            )
