"""Image decoding with request limits checked before any pixel is decoded.

Limits are checked in order of cost: byte size (free), then width*height from the header
(PIL opens lazily), then decode. PIL's own decompression-bomb check also applies (warning
above ``Image.MAX_IMAGE_PIXELS`` ~89 Mpx, treated as an error here).

Microscopy TIFFs (16-bit, float, several channels, z-stacks, OME-TIFF) are read with
tifffile (``vplab.microscopy``), so every path that decodes an image - upload, embedding,
visual prompting, training, export - sees the same 8-bit RGB pixels: the embeddings of an
image are reproducible whichever path computed them.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vplab.errors import InvalidInput, PayloadTooLarge

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


@dataclass(frozen=True)
class ImageFormat:
    """A format we accept: PIL's name for it, its media type, file extension, magic."""

    name: str
    media_type: str
    ext: str
    magic: tuple[bytes, ...]


# The one table of accepted formats (PIL may try only these: a closed list keeps exotic
# decoders, e.g. EPS, which runs Ghostscript, away from untrusted bytes; "JPEG" also
# opens camera MPO files). WebP's magic is RIFF....WEBP (see ``sniff_format``).
FORMATS = (
    ImageFormat("PNG", "image/png", ".png", (b"\x89PNG\r\n\x1a\n",)),
    ImageFormat("JPEG", "image/jpeg", ".jpg", (b"\xff\xd8\xff",)),
    ImageFormat("TIFF", "image/tiff", ".tif", TIFF_MAGIC),
    ImageFormat("BMP", "image/bmp", ".bmp", (b"BM",)),
    ImageFormat("WEBP", "image/webp", ".webp", ()),
    ImageFormat("GIF", "image/gif", ".gif", (b"GIF8",)),
)
ALLOWED_FORMATS = tuple(f.name for f in FORMATS)
_BY_NAME = {f.name: f for f in FORMATS}


def sniff_format(data: bytes) -> ImageFormat | None:
    """The format the bytes' header names (None: none we accept)."""
    head = bytes(data[:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _BY_NAME["WEBP"]
    return next((f for f in FORMATS if any(head.startswith(m) for m in f.magic)), None)


def format_named(name: str | None) -> ImageFormat | None:
    """The accepted format of PIL's name ``name`` (``Image.format``)."""
    return _BY_NAME.get(name or "")


# PIL raises these for malformed or truncated data (no single base class).
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
)


def image_sha256(data: bytes) -> str:
    """Content address of image bytes (lowercase hex), as used in storage keys."""
    return hashlib.sha256(data).hexdigest()


def check_byte_size(n: int, max_bytes: int | None, what: str = "image") -> None:
    if max_bytes is not None and n > max_bytes:
        raise PayloadTooLarge(f"{what} is {n} bytes, over the limit of {max_bytes} bytes")


def open_image(
    data: bytes,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
    what: str = "image",
    formats: tuple[str, ...] = ALLOWED_FORMATS,
) -> Image.Image:
    """Open ``data`` lazily and check its limits; pixels are NOT decoded yet.

    The returned image is fully loaded (decoded) only by the caller; ``decode_image``
    does that under the same bomb guard.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"{what} must be bytes, got {type(data).__name__}")
    check_byte_size(len(data), max_bytes, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL checks its own limit inside open(), before we see the size; its message
        # carries the actual pixel count.
        limit = f"; the limit is {max_pixels} pixels" if max_pixels is not None else ""
        raise PayloadTooLarge(f"{what} is too large to decode ({e}){limit}") from e
    except _DECODE_ERRORS as e:
        raise InvalidInput(f"{what} is not a readable image ({_reason(e)})") from e
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidInput(f"{what} is not a readable image (size {width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise PayloadTooLarge(
            f"{what} has {width}x{height} = {width * height} pixels, "
            f"over the limit of {max_pixels} pixels"
        )
    return img


def load_image(img: Image.Image, what: str = "image") -> Image.Image:
    """Decode the pixels of an image from ``open_image``, mapping PIL errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PayloadTooLarge(f"{what} is too large to decode ({e})") from e
    except _DECODE_ERRORS as e:  # truncated, bad checksum, bad codec data...
        raise InvalidInput(f"{what} is not a readable image ({_reason(e)})") from e
    return img


def decode_image(
    data: bytes, max_bytes: int | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """Decode image bytes to an (H, W, 3) uint8 RGB array.

    Raises ``PayloadTooLarge`` (limits) or ``InvalidInput`` (not a readable image).
    EXIF orientation is applied, so arrays match what image viewers show.
    """
    if isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:4]) in TIFF_MAGIC:
        from vplab.microscopy import decode_tiff

        return decode_tiff(bytes(data), max_bytes, max_pixels)
    img = load_image(open_image(data, max_bytes, max_pixels))
    try:
        img = ImageOps.exif_transpose(img)
    except _DECODE_ERRORS:
        pass  # a broken EXIF block is no reason to reject the pixels
    return to_rgb_uint8(img)


def image_size(
    data: bytes, max_bytes: int | None = None, max_pixels: int | None = None
) -> tuple[int, int]:
    """(H, W) of what ``decode_image`` returns, from the header where the format allows:
    EXIF orientations 5-8 (a quarter turn) swap the stored sides. A TIFF is decoded (its
    shape depends on the microscopy rules)."""
    if isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:4]) in TIFF_MAGIC:
        h, w = decode_image(data, max_bytes, max_pixels).shape[:2]
        return h, w
    img = open_image(data, max_bytes, max_pixels)
    width, height = img.size
    try:
        turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except _DECODE_ERRORS:
        turned = False  # decode_image ignores a broken EXIF block too
    return (width, height) if turned else (height, width)


def read_image(
    path: str | Path, max_bytes: int | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """``decode_image`` for a file; the size limit is checked before the file is read."""
    try:
        check_byte_size(os.stat(path).st_size, max_bytes, f"image file {str(path)!r}")
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise InvalidInput(f"image file {str(path)!r} does not exist or is not a file") from e
    return decode_image(data, max_bytes, max_pixels)


def to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8. High bit depths are scaled, not clipped."""
    if img.mode.startswith("I;16"):
        gray = _scale_16bit(np.asarray(img))
    elif img.mode == "I":  # 32-bit int; 16-bit PNG/TIFF data often arrives as this
        arr = np.asarray(img)
        gray = _scale_16bit(arr) if arr.min() >= 0 and arr.max() <= 65535 else _minmax(arr)
    elif img.mode == "F":  # float microscopy TIFFs: no fixed range, stretch to 0..255
        gray = _minmax(np.asarray(img))
    else:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    return np.repeat(gray[..., None], 3, axis=2)


def _scale_16bit(arr: np.ndarray) -> np.ndarray:
    # 65535 -> 255 exactly; x / 257 maps the 16-bit range linearly onto the 8-bit one.
    return np.rint(arr.astype(np.float32) / 257.0).astype(np.uint8)


def _minmax(arr: np.ndarray) -> np.ndarray:
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG of an (H, W) uint8/uint16, (H, W, 3) or (H, W, 4) uint8 array."""
    arr = np.asarray(array)
    ok = (arr.ndim == 2 and arr.dtype in (np.uint8, np.uint16)) or (
        arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.dtype == np.uint8
    )
    if not ok or arr.size == 0:
        raise InvalidInput(
            "encode_png takes a non-empty (H, W) uint8/uint16 or (H, W, 3|4) uint8 array, "
            f"got shape {arr.shape} dtype {arr.dtype}"
        )
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def check_rgb_image(image: object, field: str = "image") -> None:
    """An already-decoded image must be a non-empty (H, W, 3) uint8 array."""
    if not (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
    ):
        desc = (
            f"{image.dtype} array of shape {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise InvalidInput(f"{field} must be an HxWx3 uint8 RGB array, got {desc}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidInput(f"{field} is empty (shape {image.shape})")
