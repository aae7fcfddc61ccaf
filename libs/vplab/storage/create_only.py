"""Reads of objects that never change once written, cached per process.

A prediction's result and a reviewer's verdict are create-only keys, and a label version's
provenance is written once beside it: once read, such an object is the same forever, so
listings that summarise every image (``GET /v1/datasets/{id}/images``, a run's results
page) read each one from the store once per process instead of once per call - on S3 a
1,000-image listing was 2,200 GETs per call. Absent objects are never cached (they may be
written later); callers list a prefix to know which exist.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from vplab.storage.base import ArtifactStore

MAX_ENTRIES = 50_000  # summaries of a few hundred bytes: tens of MB at most


class CreateOnlyCache:
    """``get(store, key, transform)``: ``transform(store.get_json(key))``, read once per
    (store, key, transform) - keeping a small transform of a large object keeps the cache
    small; least recently used entries go past ``max_entries``. Thread-safe."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._by_store: weakref.WeakKeyDictionary[ArtifactStore, OrderedDict[Any, Any]] = (
            weakref.WeakKeyDictionary()
        )

    def get(
        self, store: ArtifactStore, key: str, transform: Callable[[Any], Any] = lambda x: x
    ) -> Any:
        entry = (key, transform)
        with self._lock:
            entries = self._by_store.setdefault(store, OrderedDict())
            if entry in entries:
                entries.move_to_end(entry)
                return entries[entry]
        value = transform(store.get_json(key))  # NotFound propagates, nothing cached
        with self._lock:
            entries[entry] = value
            while len(entries) > self.max_entries:
                entries.popitem(last=False)
        return value


CREATE_ONLY = CreateOnlyCache()  # the process's one cache
