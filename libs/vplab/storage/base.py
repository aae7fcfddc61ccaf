"""``ArtifactStore``: the object-store interface every service uses (local dir or S3).

Keys are '/'-separated relative paths built by ``vplab.storage.keys``. Both stores also
check the raw key shape here, so even a hand-built key cannot escape the store.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from datetime import timedelta
from pathlib import Path
from typing import Any

from vplab.errors import InvalidInput

_MAX_KEY_LEN = 1024  # S3's limit


def check_key(key: object) -> str:
    """Return ``key`` if it is a safe object key: relative, no '..', '.', '\\' or empty parts."""
    if not isinstance(key, str) or not key:
        raise InvalidInput(f"object key must be a non-empty string, got {key!r}")
    if len(key) > _MAX_KEY_LEN:
        raise InvalidInput(f"object key is longer than {_MAX_KEY_LEN} characters")
    if "\\" in key or "\x00" in key or key.startswith("/"):
        raise InvalidInput(f"object key must be relative and use '/' only, got {key!r}")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidInput(f"object key has an empty, '.' or '..' segment: {key!r}")
    return key


def check_prefix(prefix: object) -> str:
    """A listing prefix: '' (everything) or a key, optionally ending in '/'."""
    if prefix == "":
        return ""
    if not isinstance(prefix, str):
        raise InvalidInput(f"prefix must be a string, got {prefix!r}")
    check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


MAX_PRESIGN_EXPIRY = timedelta(days=7)  # S3 SigV4's limit


def check_expires(expires: object) -> timedelta:
    if not isinstance(expires, timedelta) or not (
        timedelta(seconds=1) <= expires <= MAX_PRESIGN_EXPIRY
    ):
        raise InvalidInput(f"expires must be a timedelta between 1 s and 7 days, got {expires!r}")
    return expires


class ArtifactStore(ABC):
    """Blob store with atomic writes: readers see the old or the new object, never a part."""

    @abstractmethod
    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None: ...

    @abstractmethod
    def create_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        """Write ``key`` only if it does not exist yet, atomically: of concurrent creators
        (threads, processes, replicas) exactly one gets True; the others get False and
        change nothing."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Raise ``NotFound`` if the object does not exist."""

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> None:
        """Upload a local file, streaming (large checkpoints must not sit in memory)."""

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> None:
        """Download to ``path``, streaming; ``path`` appears only once complete."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Idempotent: deleting a missing object is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many were deleted."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys under ``prefix`` (recursive), sorted."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Object size in bytes; ``NotFound`` if absent."""

    @abstractmethod
    def presigned_get_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str: ...

    # Concrete helpers shared by all stores.

    def put_json(self, key: str, obj: Any) -> None:
        data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
        self.put_bytes(key, data, content_type="application/json")

    def get_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            # Our own objects; a parse failure means corruption, reported by key.
            raise InvalidInput(f"object {key!r} is not valid JSON: {e}") from e
