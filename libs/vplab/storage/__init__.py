"""Object storage: the ``ArtifactStore`` interface, its local and S3 stores, and keys."""

from __future__ import annotations

from vplab.settings import Settings
from vplab.storage import keys
from vplab.storage.base import ArtifactStore, check_key, check_prefix
from vplab.storage.local import LocalStore
from vplab.storage.s3 import S3Store

__all__ = [
    "ArtifactStore",
    "LocalStore",
    "S3Store",
    "check_key",
    "check_prefix",
    "keys",
    "open_store",
]


def open_store(settings: Settings) -> ArtifactStore:
    """S3Store when ``settings.s3_endpoint`` is set, else LocalStore(settings.data_dir)."""
    if settings.s3_endpoint:
        return S3Store(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            bucket=settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
    return LocalStore(settings.data_dir)
