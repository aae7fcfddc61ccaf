"""PNG masks and label maps.

Binary masks are stored as 0/255 uint8 (visible in any viewer). Label maps store class
ids directly: uint8 when every id fits, else uint16. PNG only: lossy formats would
corrupt class ids. Reading goes through ``vplab.images.open_image``, so the same
byte/pixel limits and bomb checks apply as for images.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from vplab.errors import InvalidInput
from vplab.images import load_image, open_image


def encode_binary_mask(mask: np.ndarray) -> bytes:
    """(H, W) mask (nonzero = foreground) -> PNG bytes with values 0/255."""
    arr = _check_2d(mask, "mask")
    return _png(np.where(arr != 0, 255, 0).astype(np.uint8))


def read_binary_mask(
    src: bytes | str | Path, max_bytes: int | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """PNG -> (H, W) bool; any value > 0 is foreground (0/1, 0/255 and palette masks)."""
    arr = _read(src, "mask", max_bytes, max_pixels)
    if arr.ndim == 3:  # RGB(A) masks from drawing tools: colour = foreground, alpha ignored
        arr = arr[..., :3].max(axis=2)
    return arr > 0


def encode_label_map(labels: np.ndarray) -> bytes:
    """(H, W) integer class ids in 0..65535 -> PNG bytes (uint8 if ids < 256, else uint16)."""
    arr = _check_2d(labels, "label map")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise InvalidInput(f"label map must have an integer dtype, got {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 65535:
        raise InvalidInput(f"label ids must be in 0..65535, got range {lo}..{hi}")
    return _png(arr.astype(np.uint8 if hi < 256 else np.uint16))


def read_label_map(
    src: bytes | str | Path, max_bytes: int | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """PNG -> (H, W) int32 class ids. Palette PNGs give palette indices (VOC style)."""
    arr = _read(src, "label map", max_bytes, max_pixels)
    if arr.ndim != 2:
        raise InvalidInput(f"label map PNG must be single-channel, got shape {arr.shape}")
    return arr.astype(np.int32)


def _check_2d(a: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2 or arr.size == 0:
        raise InvalidInput(f"{what} must be a non-empty 2-D array, got shape {arr.shape}")
    return arr


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def _read(
    src: bytes | str | Path, what: str, max_bytes: int | None, max_pixels: int | None
) -> np.ndarray:
    if isinstance(src, (str, Path)):
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise InvalidInput(f"{what} file {str(src)!r} cannot be read: {e.strerror}") from e
    else:
        data = src
    label = f"{what} PNG"
    img = load_image(open_image(data, max_bytes, max_pixels, label, formats=("PNG",)), label)
    if img.mode in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "RGB", "RGBA"):
        return np.asarray(img)
    if img.mode in ("LA", "PA"):
        return np.asarray(img)[..., 0]  # drop alpha, keep grey value / palette index
    return np.asarray(img.convert("RGB"))
