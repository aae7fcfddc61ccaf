"""Keep freed tensor memory inside the process instead of handing it back to the kernel.

PyTorch's CPU tensors come from glibc ``malloc``. With glibc's defaults, a freed block of a
few MB (SAM's decoder makes many: 4,104 x 256 floats per image-token tensor, 32 x 256 x 256
for the upscaled masks) is unmapped or trimmed, so the next step's allocation of the same
size faults every page in again. On the 2-core benchmark VM that was ~2,300 page faults
and ~20 ms of system time per decoder training step; with these limits it is ~200 faults
and ~4 ms (BENCHMARKS.md, ``train``). The price is that the heap keeps up to ``trim_mb``
of free memory around; blocks above 32 MiB (encoder attention maps) are still mmapped.

No torch import here: the CLI calls this before deciding what to load.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # the largest value glibc accepts on 64-bit


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") else None


def keep_freed_memory(trim_mb: int) -> bool:
    """Raise glibc's mmap and trim thresholds for this process (``trim_mb`` <= 0: leave them).

    Returns whether both were applied: False on a non-glibc libc (musl, macOS), where it
    does nothing. Safe to call more than once.
    """
    if trim_mb <= 0:
        return False
    libc = _libc()
    if libc is None:
        return False
    ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, int(trim_mb) * 1024 * 1024) == 1
    return ok_mmap and ok_trim
