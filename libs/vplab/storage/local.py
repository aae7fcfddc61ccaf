"""``LocalStore``: the embedded default store, one directory on the local filesystem."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from vplab.errors import InvalidInput, NotFound
from vplab.storage._atomic import TMP_PREFIX, atomic_create, atomic_writer
from vplab.storage.base import ArtifactStore, check_expires, check_key, check_prefix

_CHUNK = 1024 * 1024


class LocalStore(ArtifactStore):
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        check_key(key)
        if any(part.startswith(TMP_PREFIX) for part in key.split("/")):
            raise InvalidInput(f"object key segments must not start with {TMP_PREFIX!r}")
        return self.root.joinpath(*key.split("/"))

    def _file(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():  # a "directory" is not an object, as on S3
            raise NotFound(f"object {key!r} not found")
        return path

    def _parent_dir(self, key: str, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            # S3 allows "a" and "a/b" side by side; a filesystem cannot.
            raise InvalidInput(f"object key {key!r} conflicts with an existing object") from e
        if path.is_dir():
            raise InvalidInput(f"object key {key!r} conflicts with existing objects under it")

    def _write(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        path = self._path(key)
        for attempt in range(3):
            self._parent_dir(key, path)
            try:
                with atomic_writer(path) as f:
                    write(f)
                return
            except FileNotFoundError:
                # delete_prefix pruned the empty directory between mkdir and mkstemp.
                if attempt == 2 or path.parent.exists():
                    raise

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"data for {key!r} must be bytes, got {type(data).__name__}")
        self._write(key, lambda f: f.write(data))

    def create_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"data for {key!r} must be bytes, got {type(data).__name__}")
        path = self._path(key)
        for attempt in range(3):
            self._parent_dir(key, path)
            try:
                return atomic_create(path, bytes(data))
            except FileNotFoundError:
                # delete_prefix pruned the empty directory between mkdir and mkstemp.
                if attempt == 2 or path.parent.exists():
                    raise
        return False  # pragma: no cover - the loop returns or raises

    def get_bytes(self, key: str) -> bytes:
        path = self._file(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as e:  # deleted between the check and the read
            raise NotFound(f"object {key!r} not found") from e

    def put_file(self, key: str, path: str | Path) -> None:
        with open(path, "rb") as src:
            self._write(key, lambda f: shutil.copyfileobj(src, f, _CHUNK))

    def get_file(self, key: str, path: str | Path) -> None:
        src_path = self._file(key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(src_path, "rb") as src, atomic_writer(path) as f:
                shutil.copyfileobj(src, f, _CHUNK)
        except FileNotFoundError as e:
            if not src_path.exists():
                raise NotFound(f"object {key!r} not found") from e
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            return  # not an object; delete_prefix removes trees
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        self._prune_empty_dirs(prefix)
        return len(keys)

    def _prune_empty_dirs(self, prefix: str) -> None:
        # Best effort; rmdir only removes empty directories, and writers retry if their
        # directory vanished between mkdir and mkstemp.
        top = self.root.joinpath(*[p for p in prefix.split("/")[:-1] if p])
        if not top.is_dir():
            return
        for dirpath, _dirnames, _files in os.walk(top, topdown=False):
            if Path(dirpath) != self.root:
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        # Walk only the deepest directory the prefix fully names, then filter.
        top = self.root.joinpath(*[p for p in prefix.split("/")[:-1] if p])
        if not top.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(top):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            base = "" if rel == "." else rel + "/"
            dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
            for name in filenames:
                if name.startswith(TMP_PREFIX):
                    continue  # a write in flight, or left by a crash
                key = base + name
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def size(self, key: str) -> int:
        path = self._file(key)
        try:
            return path.stat().st_size
        except FileNotFoundError as e:
            raise NotFound(f"object {key!r} not found") from e

    def presigned_get_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        # A local file needs no signature; ``expires`` is validated for parity with S3.
        check_expires(expires)
        return self._file(key).as_uri()
