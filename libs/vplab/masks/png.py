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
    """PNG -> (H, W) bool; any nonzero id is foreground (``read_label_png``'s policy)."""
    return read_label_png(src, max_bytes, max_pixels, "mask") > 0


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
    """PNG -> (H, W) int32 class ids (``read_label_png``'s policy)."""
    return read_label_png(src, max_bytes, max_pixels, "label map")


_SINGLE_CHANNEL = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")


def read_label_png(
    src: bytes | str | Path,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
    what: str = "label",
) -> np.ndarray:
    """The one reader of mask and label PNGs: -> (H, W) int32 ids, 0 = background.

    Accepted: single-channel PNGs (binary 0/1 or 0/255, mode '1', grey or 16-bit label
    maps, palette PNGs as their palette indices, VOC style), the same with an alpha
    channel (ignored), RGB(A) whose three channels are equal, and a drawing tool's binary
    mask: black plus one colour (-> 0/1). Any other colour image is rejected: which colour
    is which class would be a guess (save label maps as grey or palette PNGs).
    """
    if isinstance(src, (str, Path)):
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise InvalidInput(f"{what} file {str(src)!r} cannot be read: {e.strerror}") from e
    else:
        data = src
    label = f"{what} PNG"
    img = load_image(open_image(data, max_bytes, max_pixels, label, formats=("PNG",)), label)
    if img.mode in _SINGLE_CHANNEL:
        arr = np.asarray(img)
    elif img.mode in ("LA", "PA"):
        arr = np.asarray(img)[..., 0]  # alpha ignored: grey value / palette index
    elif img.mode in ("RGB", "RGBA"):
        rgb = np.asarray(img)[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            arr = rgb[..., 0]
        else:
            arr = _two_colour_mask(rgb, label)
    else:
        raise InvalidInput(
            f"{label} must be a binary mask or a label map (single channel); got mode {img.mode}"
        )
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise InvalidInput(f"{what} ids must be in 0..65535")
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


def _two_colour_mask(rgb: np.ndarray, label: str) -> np.ndarray:
    fg = rgb.any(axis=2)
    if fg.any():
        first = rgb[fg][0]
        if not (rgb[fg] == first).all():
            raise InvalidInput(
                f"{label} must be a binary mask or a label map (single channel, palette, grey "
                "RGB, or black plus one colour); got a colour image with several colours"
            )
    return np.asarray(fg, dtype=np.uint8)
