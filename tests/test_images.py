"""vplab.images: decoding to RGB uint8 under byte / pixel limits."""

from __future__ import annotations

import hashlib
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from vplab.errors import InvalidInput, PayloadTooLarge
from vplab.images import decode_image, encode_png, image_sha256, read_image


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(h=12, w=17, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def forged_png(width: int, height: int) -> bytes:
    """A valid-looking, tiny PNG whose IHDR claims width x height (8-bit grey)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    chunks = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


# --- formats --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_rgb_round_trip(fmt):
    a = _rgb()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(_save(Image.fromarray(a), fmt, **kw))
    assert out.dtype == np.uint8 and out.shape == (12, 17, 3)
    np.testing.assert_array_equal(out, a)


def test_jpeg_decodes_close():
    a = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    out = decode_image(_save(Image.fromarray(a), "JPEG", quality=95))
    assert out.shape == (16, 16, 3) and np.abs(out.astype(int) - a).max() < 8


def test_grayscale_and_binary_to_rgb():
    g = np.arange(12 * 17, dtype=np.uint8).reshape(12, 17)
    out = decode_image(_save(Image.fromarray(g), "PNG"))
    assert out.shape == (12, 17, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)
    b = decode_image(_save(Image.fromarray(g > 100), "PNG"))  # mode "1"
    assert set(np.unique(b).tolist()) == {0, 255}


def test_rgba_drops_alpha():
    a = np.dstack([_rgb(), np.zeros((12, 17, 1), np.uint8)])
    np.testing.assert_array_equal(decode_image(_save(Image.fromarray(a), "PNG")), a[..., :3])


def test_palette_to_rgb():
    idx = np.random.default_rng(1).integers(0, 3, (8, 9)).astype(np.uint8)
    img = Image.fromarray(idx, mode="P")
    pal = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    img.putpalette([v for rgb in pal for v in rgb] + [0] * (256 * 3 - 9))
    out = decode_image(_save(img, "PNG"))
    np.testing.assert_array_equal(out, np.array(pal, np.uint8)[idx])


def test_cmyk_jpeg_to_rgb():
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_save(img, "JPEG", quality=100))
    assert out.shape == (8, 8, 3)
    r, g, b = out[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_16bit_png_is_scaled_not_clipped():
    a = np.array([[0, 257, 32896, 65535]], np.uint16)  # 0, 1, 128, 255 in 8 bits
    out = decode_image(_save(Image.fromarray(a), "PNG"))
    assert out[..., 0].tolist() == [[0, 1, 128, 255]]


def test_tiffs_follow_the_microscopy_rule():
    """16-bit and float TIFFs are microscopy data: percentiles 1 / 99.8 per channel
    (vplab.microscopy; tests/test_microscopy.py), not a fixed linear scale."""
    a = np.array([[-1.0, 0.0, 1.0]], np.float32)
    out = decode_image(_save(Image.fromarray(a, mode="F"), "TIFF"))
    assert out[..., 0].tolist() == [[0, 126, 255]]  # lo -0.98, hi 0.996: 0 -> 126.5 -> 126


def test_exif_orientation_applied():
    a = _rgb(4, 6)
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW for display
    out = decode_image(_save(img, "PNG", exif=exif))
    assert out.shape == (6, 4, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_image_size_from_the_header_is_the_decoded_shape(orientation):
    from vplab.images import image_size

    img = Image.fromarray(_rgb(4, 6))
    exif = img.getexif()
    exif[0x0112] = orientation
    for fmt in ("PNG", "JPEG"):
        data = _save(img, fmt, exif=exif)
        assert image_size(data) == decode_image(data).shape[:2], (fmt, orientation)
    tiff = _save(Image.fromarray(_rgb(5, 3)), "TIFF")
    assert image_size(tiff) == decode_image(tiff).shape[:2] == (5, 3)


# --- rejection ------------------------------------------------------------------------------------


def test_forged_huge_header_rejected_before_decoding():
    data = forged_png(100_000, 100_000)
    assert len(data) < 200
    t = time.perf_counter()
    # PIL's own bomb guard fires first at this size (not a MemoryError); the message
    # still names the actual size and our limit.
    with pytest.raises(PayloadTooLarge, match=r"10000000000 pixels.*limit is 1000000 pixels"):
        decode_image(data, max_pixels=1_000_000)
    with pytest.raises(PayloadTooLarge, match="too large"):
        decode_image(data)
    # Under PIL's threshold, our limit is checked from the header alone.
    with pytest.raises(PayloadTooLarge, match=r"5000x5000 = 25000000 pixels.*limit of 1000000"):
        decode_image(forged_png(5000, 5000), max_pixels=1_000_000)
    assert time.perf_counter() - t < 1.0


def test_pil_bomb_warning_range_rejected():
    # Above Image.MAX_IMAGE_PIXELS (~89 Mpx) but under 2x: PIL only warns; we refuse.
    with pytest.raises(PayloadTooLarge):
        decode_image(forged_png(10_000, 10_000))


def test_pixel_limit_boundary():
    data = _save(Image.fromarray(_rgb(10, 10)), "PNG")
    assert decode_image(data, max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(PayloadTooLarge, match="100 pixels, over the limit of 99"):
        decode_image(data, max_pixels=99)


def test_byte_limit_checked_first():
    data = b"x" * 1000  # not even an image: size is checked before parsing
    with pytest.raises(PayloadTooLarge, match="1000 bytes, over the limit of 999 bytes"):
        decode_image(data, max_bytes=999)


def test_truncated_file_rejected():
    data = _save(Image.fromarray(_rgb(64, 64)), "PNG")
    for cut in (len(data) // 2, 30):
        with pytest.raises(InvalidInput, match="is not a readable image"):
            decode_image(data[:cut])
    jpeg = _save(Image.fromarray(_rgb(64, 64)), "JPEG")
    with pytest.raises(InvalidInput, match="is not a readable image"):
        decode_image(jpeg[: len(jpeg) // 2])


@pytest.mark.parametrize(
    "data", [b"", b"hello, this is text", b"%!PS-Adobe-3.0 EPSF-3.0\n", b"\x89PNG\r\n\x1a\n"]
)
def test_non_images_rejected(data):
    with pytest.raises(InvalidInput, match="is not a readable image"):
        decode_image(data)


def test_forged_header_within_limits_is_invalid_not_crash():
    with pytest.raises(InvalidInput, match="is not a readable image"):
        decode_image(forged_png(100, 100))


def test_wrong_type_rejected():
    with pytest.raises(InvalidInput, match="must be bytes"):
        decode_image("not bytes")  # type: ignore[arg-type]


# --- files, hashing, encoding ---------------------------------------------------------------------


def test_read_image(tmp_path):
    a = _rgb()
    p = tmp_path / "x.png"
    Image.fromarray(a).save(p)
    np.testing.assert_array_equal(read_image(p), a)
    with pytest.raises(PayloadTooLarge, match="bytes"):
        read_image(p, max_bytes=10)
    with pytest.raises(InvalidInput, match="does not exist"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(InvalidInput, match="does not exist"):
        read_image(tmp_path)


def test_image_sha256():
    assert image_sha256(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(image_sha256(b"")) == 64


@pytest.mark.parametrize(
    "arr",
    [
        _rgb(),
        np.dstack([_rgb(), np.full((12, 17, 1), 7, np.uint8)]),
        np.arange(20, dtype=np.uint8).reshape(4, 5),
        np.array([[0, 1000, 65535]], np.uint16),
    ],
)
def test_encode_png_lossless(arr):
    data = encode_png(arr)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), arr)


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((3, 3), np.float32),
        np.zeros((3, 3, 2), np.uint8),
        np.zeros((0, 3), np.uint8),
        np.zeros(3, np.uint8),
    ],
)
def test_encode_png_rejects(arr):
    with pytest.raises(InvalidInput, match="encode_png"):
        encode_png(arr)


def test_the_one_format_table_names_what_pil_writes():
    import io

    import numpy as np
    from PIL import Image

    from vplab.images import FORMATS, format_named, sniff_format

    pixels = Image.fromarray(np.full((8, 8, 3), 90, np.uint8))
    for fmt in FORMATS:
        buf = io.BytesIO()
        pixels.save(buf, format=fmt.name)
        found = sniff_format(buf.getvalue())
        assert found is fmt and format_named(Image.open(buf).format) is fmt, fmt.name
    assert sniff_format(b"II+\x00" + b"\x00" * 12).name == "TIFF"  # BigTIFF
    assert sniff_format(b"%!PS-Adobe-3.0 EPSF") is None and format_named("EPS") is None
