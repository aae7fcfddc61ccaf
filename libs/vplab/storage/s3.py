"""``S3Store``: any S3-compatible store (MinIO, AWS, Ceph...) through the ``minio`` SDK.

Only plain S3 calls are used (PUT/GET/HEAD/DELETE, ListObjectsV2, DeleteObjects,
SigV4 presigning), so no MinIO-specific feature is required of the server.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from minio.helpers import DictType

from vplab.errors import InvalidInput, NotFound, Unavailable
from vplab.storage._atomic import atomic_writer
from vplab.storage.base import ArtifactStore, check_expires, check_key, check_prefix

_NOT_FOUND = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}
_CHUNK = 1024 * 1024
_PART_SIZE = 16 * 1024 * 1024  # multipart for big files; CompleteMultipartUpload is atomic


class S3Store(ArtifactStore):
    def __init__(
        self,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        bucket: str,
        secure: bool = False,
        region: str = "us-east-1",
    ):
        self.bucket = bucket
        self.endpoint = endpoint
        try:
            self.client = Minio(
                endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=secure,
                region=region,
            )
        except ValueError as e:
            raise InvalidInput(f"bad S3 endpoint {endpoint!r}: {e}") from e
        self._ensure_bucket()

    def __repr__(self) -> str:
        return f"S3Store({self.endpoint!r}, bucket={self.bucket!r})"

    def _ensure_bucket(self) -> None:
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as e:
            # Another replica may have created it between the check and the create.
            if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise Unavailable(f"S3 bucket {self.bucket!r} unusable: {e.code}") from e
        except ValueError as e:  # minio's client-side bucket-name check
            raise InvalidInput(f"bad S3 bucket name {self.bucket!r}: {e}") from e

    @contextmanager
    def _mapped(self, key: str) -> Iterator[None]:
        try:
            yield
        except S3Error as e:
            if e.code in _NOT_FOUND:
                raise NotFound(f"object {key!r} not found") from e
            raise

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        check_key(key)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"data for {key!r} must be bytes, got {type(data).__name__}")
        data = bytes(data)
        # A single PUT is atomic on S3: readers see the old or the new object.
        self.client.put_object(
            self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
        )

    def create_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        check_key(key)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"data for {key!r} must be bytes, got {type(data).__name__}")
        # S3's conditional PutObject (If-None-Match: *): the store decides, so creators in
        # different processes or regions cannot both win. minio-py's public put_object
        # turns unknown headers into x-amz-meta-* metadata, so this goes one level lower,
        # to the PutObject call it wraps (pinned minio version; tested against moto).
        headers: DictType = {"Content-Type": content_type, "If-None-Match": "*"}
        try:
            self.client._put_object(self.bucket, key, bytes(data), headers=headers)
        except S3Error as e:
            if e.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def get_bytes(self, key: str) -> bytes:
        check_key(key)
        with self._mapped(key):
            response = self.client.get_object(self.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def put_file(self, key: str, path: str | Path) -> None:
        check_key(key)
        self.client.fput_object(self.bucket, key, str(path), part_size=_PART_SIZE)

    def get_file(self, key: str, path: str | Path) -> None:
        check_key(key)
        path = Path(path)
        with self._mapped(key):
            response = self.client.get_object(self.bucket, key)
        try:
            # Not minio's fget_object: it removes the target before renaming (not atomic).
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_writer(path) as f:
                for chunk in response.stream(_CHUNK):
                    f.write(chunk)
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        check_key(key)
        # S3 DELETE of a missing key succeeds: idempotent by protocol.
        with self._mapped(key):
            self.client.remove_object(self.bucket, key)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        if keys:
            # remove_objects is lazy: iterating it sends the batched DeleteObjects requests.
            errors = list(self.client.remove_objects(self.bucket, map(DeleteObject, keys)))
            failed = [e for e in errors if e.code not in _NOT_FOUND]
            if failed:
                raise Unavailable(
                    f"could not delete {len(failed)} objects under {prefix!r}: {failed[0].code}"
                )
        return len(keys)

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        objects = self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
        return sorted(o.object_name for o in objects if not o.is_dir)

    def size(self, key: str) -> int:
        check_key(key)
        with self._mapped(key):
            return int(self.client.stat_object(self.bucket, key).size or 0)

    def presigned_get_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        check_expires(expires)
        # Check first: a URL that can only 404 is a bug at the caller's side.
        self.size(key)
        return self.client.presigned_get_object(self.bucket, key, expires=expires)
