"""COCO run-length encoding of binary masks, via pycocotools.

Wire form: ``{"size": [H, W], "counts": "<str>"}`` (COCO compressed RLE, column-major).
Incoming RLE is untrusted: pycocotools checks only that runs do not overflow the mask,
so a too-short ``counts`` would decode uninitialised memory. We therefore parse the
counts string (the COCO format, maskApi.c ``rleFrString``) and require the runs to
cover exactly H*W pixels before handing it to pycocotools.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from vplab.errors import InvalidInput

# pycocotools 2.0.11's Cython decode predates numpy 2's __array__(copy=) protocol; the
# warning is harmless and would otherwise fire on every decode. Narrow, process-wide.
warnings.filterwarnings(
    "ignore",
    message=r"__array__ implementation doesn't accept a copy keyword",
    category=DeprecationWarning,
    module=r"pycocotools\.",
)

MAX_SIDE = 1 << 16  # masks larger than the largest accepted image are nonsense


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Binary (H, W) mask (bool or numbers, nonzero = foreground) -> wire RLE."""
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.size == 0:
        raise InvalidInput(f"mask must be a non-empty 2-D array, got shape {arr.shape}")
    if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
        raise InvalidInput(f"mask must be boolean or numeric, got dtype {arr.dtype}")
    # pycocotools wants column-major uint8. A bool array is already 0/1 bytes, and a
    # column-major one (see inference.segmentation) needs no copy at all.
    binary = arr.view(np.uint8) if arr.dtype == bool else (arr != 0).view(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(binary))
    return {"size": [int(arr.shape[0]), int(arr.shape[1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: Mapping[str, Any], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Wire RLE -> (H, W) bool mask. ``shape``, if given, must equal the RLE's size."""
    h, w, counts = _validate(rle)
    if shape is not None and (h, w) != tuple(shape):
        raise InvalidInput(f"RLE size {[h, w]} does not match the expected shape {list(shape)}")
    return mask_utils.decode({"size": [h, w], "counts": counts}).astype(bool)


def rle_area(rle: Mapping[str, Any]) -> int:
    """Foreground pixel count, without decoding the mask."""
    h, w, counts = _validate(rle)
    return int(mask_utils.area({"size": [h, w], "counts": counts}))


def _validate(rle: object) -> tuple[int, int, bytes]:
    if not isinstance(rle, Mapping):
        raise InvalidInput(
            f"RLE must be an object with 'size' and 'counts', got {type(rle).__name__}"
        )
    size, counts = rle.get("size"), rle.get("counts")
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        raise InvalidInput(f"RLE 'size' must be [H, W] integers, got {size!r}")
    h, w = size
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise InvalidInput(f"RLE 'size' {[h, w]} out of range 1..{MAX_SIDE}")
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidInput("RLE 'counts' must be an ASCII string") from None
    elif isinstance(counts, (bytes, bytearray)):
        counts = bytes(counts)
    else:
        raise InvalidInput(f"RLE 'counts' must be a string, got {type(counts).__name__}")
    total = _total_run_length(counts)
    if total != h * w:
        raise InvalidInput(f"RLE 'counts' cover {total} pixels, size {[h, w]} needs {h * w}")
    return h, w, counts


def _total_run_length(s: bytes) -> int:
    # COCO's 6-bit varint format with delta coding of runs from the third run on.
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise InvalidInput("RLE 'counts' is truncated")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise InvalidInput(f"RLE 'counts' has an invalid character {chr(s[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if k > 13:  # > 64 bits: no real mask needs this
                raise InvalidInput("RLE 'counts' has an overlong number")
            if not more and c & 0x10:
                x -= 1 << (5 * k)  # sign-extend
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise InvalidInput("RLE 'counts' has a negative run length")
        counts.append(x)
    return sum(counts)
