"""Reading an uploaded archive (zip or tar) safely, before anything is extracted.

Every member is checked from the archive's directory alone: names that are absolute,
climb out (``..``), or are links or devices; more members than ``max_members``; a member
over ``max_member_bytes``; a total over ``max_total_bytes``; a zip member whose declared
size is more than ``max_ratio`` times its compressed size (a bomb). Any of these rejects
the whole archive (``InvalidInput``): nothing is read, nothing is written. Reads are then
bounded by the declared sizes (a member that inflates past its declared size is an error).
"""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from vplab.errors import InvalidInput


@dataclass(frozen=True)
class Member:
    name: str  # a relative POSIX path inside the archive
    size: int


@dataclass(frozen=True)
class Limits:
    max_members: int = 100_000
    max_member_bytes: int = 64 * 1024 * 1024
    max_total_bytes: int = 8 * 1024**3
    max_ratio: int = 200


def _clean(name: str) -> str | None:
    """The member's path, or None for directories and OS litter (__MACOSX, ._*)."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or (p.parts and ":" in p.parts[0]) or ".." in p.parts:
        raise InvalidInput(f"archive member {name!r} has an unsafe path")
    if name.endswith("/") or not p.parts:
        return None
    if p.parts[0] == "__MACOSX" or p.name.startswith("._") or p.name.startswith("."):
        return None
    return str(p)


class Archive:
    """A checked zip or tar on disk: ``members`` and ``read(name)``."""

    def __init__(self, source: str | Path | IO[bytes], limits: Limits = Limits()):
        """``source``: a path, or a seekable binary file (kept open by the caller)."""
        self.limits = limits
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        if isinstance(source, (str, Path)):
            f: IO[bytes] = open(source, "rb")  # noqa: SIM115  (closed in close())
            self._own: IO[bytes] | None = f
        else:
            f, self._own = source, None
        if zipfile.is_zipfile(f):
            f.seek(0)
            self._zip = zipfile.ZipFile(f)
            entries = [
                (i.filename, i.file_size, i.compress_size, i.is_dir()) for i in self._zip.infolist()
            ]
            self._check_zip_types()
        else:
            try:
                f.seek(0)
                self._tar = tarfile.open(fileobj=f)  # noqa: SIM115  (closed in close())
            except (tarfile.TarError, OSError):
                raise InvalidInput("the archive is neither a zip nor a tar file") from None
            entries = []
            for t in self._tar.getmembers():
                if not (t.isfile() or t.isdir()):
                    raise InvalidInput(f"archive member {t.name!r} is a link or a device")
                entries.append((t.name, t.size, t.size, t.isdir()))
        if len(entries) > limits.max_members:
            raise InvalidInput(
                f"the archive has {len(entries)} members (at most {limits.max_members})"
            )
        total = 0
        members: dict[str, Member] = {}
        self._raw: dict[str, str] = {}  # clean name -> the name as stored
        for name, size, packed, is_dir in entries:
            clean = _clean(name)
            if clean is None or is_dir:
                continue
            if size > limits.max_member_bytes:
                raise InvalidInput(
                    f"archive member {name!r} is {size} bytes (at most {limits.max_member_bytes})"
                )
            if size > limits.max_ratio * max(packed, 1) and size > 1024 * 1024:
                raise InvalidInput(
                    f"archive member {name!r} inflates {size // max(packed, 1)}x: refused"
                )
            total += size
            if clean in members:
                raise InvalidInput(f"archive member {clean!r} appears twice")
            members[clean] = Member(clean, size)
            self._raw[clean] = name
        if total > limits.max_total_bytes:
            raise InvalidInput(
                f"the archive holds {total} bytes (at most {limits.max_total_bytes})"
            )
        self.members = members

    def _check_zip_types(self) -> None:
        assert self._zip is not None
        for info in self._zip.infolist():
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:  # a symlink stored in a zip
                raise InvalidInput(f"archive member {info.filename!r} is a link")

    def read(self, name: str) -> bytes:
        """A member's bytes, never more than its declared size."""
        m = self.members[name]
        if self._zip is not None:
            with self._zip.open(self._raw[name]) as f:
                data = f.read(m.size + 1)
        else:
            assert self._tar is not None
            member = self._tar.extractfile(self._raw[name])
            if member is None:
                raise InvalidInput(f"archive member {name!r} cannot be read")
            data = member.read(m.size + 1)
        if len(data) > m.size:
            raise InvalidInput(f"archive member {name!r} is larger than it declares")
        return data

    def names(self) -> Iterator[str]:
        return iter(sorted(self.members))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()
        if self._own is not None:
            self._own.close()
