"""Microscopy images: TIFF / OME-TIFF of any bit depth, channels and planes -> 8-bit RGB.

The rule (one rule, applied by ``vplab.images.decode_image`` on every path):
- The image is the file's first series. Planes: the first index of every axis other than
  Y, X and the channel axis (T, Z, ...: the first time point, the first z-slice).
- Channels (C or S axis): 1 -> grey; 2 or 3 -> red, green(, blue) in file order; more than
  3 -> the first 3. A dataset's ``channels`` setting chooses others: ``select_channels``
  makes the stored image a TIFF of just those (raw values, in the chosen order), so the
  rule above, unchanged, shows one chosen channel as grey and 2-3 as a composite.
- Intensities: 8-bit RGB (or grey) is kept as it is; anything else (16-bit, 32-bit,
  float) is scaled per channel from its 1st to its 99.8th percentile onto 0..255, clipped
  (NaN and infinities count as the low end). ``NORMALISATION`` names the rule.
Limits: byte size first, then the pixel count from the header (before any pixel is
read). Unreadable or exotic files (complex numbers, more than 6 axes, no Y/X) are
``InvalidInput``.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np

from vplab.errors import InvalidInput, PayloadTooLarge

NORMALISATION = "first series, first plane of T/Z; channels 1->grey, 2-3->RGB, >3->first 3; 8-bit kept, else per-channel percentiles 1 / 99.8 -> 0..255"
P_LOW, P_HIGH = 1.0, 99.8


def _series(data: bytes, max_bytes: int | None, max_pixels: int | None):
    import tifffile

    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes, over the limit of {max_bytes} bytes")
    try:
        tif = tifffile.TiffFile(io.BytesIO(data))
        series = tif.series[0]
        axes, shape = series.axes, series.shape
    except Exception as e:  # tifffile raises many kinds for malformed files
        raise InvalidInput(f"image is not a readable TIFF ({type(e).__name__}: {e})") from e
    if "Y" not in axes or "X" not in axes or len(axes) > 6:
        raise InvalidInput(f"TIFF has axes {axes!r}: need Y and X, at most 6 axes")
    h, w = shape[axes.index("Y")], shape[axes.index("X")]
    if h <= 0 or w <= 0:
        raise InvalidInput(f"TIFF has size {w}x{h}")
    if max_pixels is not None and h * w > max_pixels:
        raise PayloadTooLarge(
            f"image has {w}x{h} = {w * h} pixels, over the limit of {max_pixels} pixels"
        )
    return tif, series


def _first_plane(arr: np.ndarray, axes: str) -> tuple[np.ndarray, bool]:
    """-> (H, W, C) and whether a channel axis existed."""
    channel = next((a for a in ("C", "S") if a in axes), None)
    index: list[Any] = []
    keep = []
    for a in axes:
        if a in ("Y", "X") or a == channel:
            index.append(slice(None))
            keep.append(a)
        else:
            index.append(0)
    plane = arr[tuple(index)]
    order = [keep.index(a) for a in ("Y", "X")] + ([keep.index(channel)] if channel else [])
    plane = np.transpose(plane, order)
    if channel is None:
        plane = plane[..., None]
    return plane, channel is not None


def _to_uint8(channel: np.ndarray) -> np.ndarray:
    x = channel.astype(np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros(x.shape, np.uint8)
    lo, hi = np.percentile(x[finite], [P_LOW, P_HIGH])
    x = np.where(finite, x, lo)
    if hi <= lo:
        return np.where(x > lo, 255, 0).astype(np.uint8)
    return np.clip(np.rint((x - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def decode_tiff(
    data: bytes, max_bytes: int | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """TIFF bytes -> (H, W, 3) uint8 by the module's rule."""
    tif, series = _series(data, max_bytes, max_pixels)
    with tif:
        try:
            arr = series.asarray()
        except Exception as e:
            raise InvalidInput(f"image is not a readable TIFF ({type(e).__name__}: {e})") from e
    if np.iscomplexobj(arr) or (arr.dtype.kind not in "uif" and arr.dtype != bool):
        raise InvalidInput(f"TIFF pixels of type {arr.dtype} are not supported")
    plane, _ = _first_plane(arr, series.axes)
    plane = plane[..., :3]
    if plane.dtype == np.uint8:
        out = plane
    else:
        out = np.stack([_to_uint8(plane[..., c]) for c in range(plane.shape[2])], axis=2)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    elif out.shape[2] == 2:
        out = np.concatenate([out, np.zeros_like(out[..., :1])], axis=2)
    return np.ascontiguousarray(out)


def select_channels(
    data: bytes,
    channels: tuple[int, ...],
    max_bytes: int | None = None,
    max_pixels: int | None = None,
) -> bytes:
    """A TIFF of the first plane's ``channels`` (0-based, this order), raw values: what a
    dataset with a ``channels`` setting stores for an uploaded TIFF. Deterministic (the
    same file and choice give the same bytes, hence the same image id)."""
    import tifffile

    tif, series = _series(data, max_bytes, max_pixels)
    with tif:
        try:
            arr = series.asarray()
        except Exception as e:
            raise InvalidInput(f"image is not a readable TIFF ({type(e).__name__}: {e})") from e
    if np.iscomplexobj(arr) or (arr.dtype.kind not in "uif" and arr.dtype != bool):
        raise InvalidInput(f"TIFF pixels of type {arr.dtype} are not supported")
    plane, _ = _first_plane(arr, series.axes)
    n = plane.shape[2]
    missing = [c for c in channels if c >= n]
    if missing:
        raise InvalidInput(
            f"the image has {n} channel{'s' if n > 1 else ''} (0..{n - 1}): the dataset's "
            f"channels setting {list(channels)} names {missing}"
        )
    picked = np.ascontiguousarray(plane[..., list(channels)])
    buf = io.BytesIO()
    if len(channels) == 1:
        tifffile.imwrite(buf, picked[..., 0], photometric="minisblack")
    else:
        tifffile.imwrite(
            buf, picked, photometric="minisblack", planarconfig="contig", metadata={"axes": "YXC"}
        )
    return buf.getvalue()


def tiff_metadata(data: bytes) -> dict[str, Any] | None:
    """What an image record keeps of a TIFF: axes, shape, dtype, and for OME-TIFF the
    physical pixel sizes, channel names and dimension order. None for other files."""
    import tifffile

    from vplab.images import TIFF_MAGIC

    if bytes(data[:4]) not in TIFF_MAGIC:
        return None
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            s = tif.series[0]
            meta: dict[str, Any] = {
                "format": "OME-TIFF" if tif.is_ome else "TIFF",
                "axes": s.axes,
                "shape": [int(v) for v in s.shape],
                "dtype": str(s.dtype),
                "normalisation": NORMALISATION,
            }
            if tif.is_ome and tif.ome_metadata:
                meta["ome"] = _ome_summary(tif.ome_metadata)
            return meta
    except Exception:  # noqa: BLE001  (metadata is best-effort: decode_image judges the file)
        return None


def _ome_summary(xml: str) -> dict[str, Any]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"), None)
    if pixels is None:
        return {}
    keys = (
        "DimensionOrder", "Type", "SizeX", "SizeY", "SizeZ", "SizeC", "SizeT",
        "PhysicalSizeX", "PhysicalSizeY", "PhysicalSizeZ",
        "PhysicalSizeXUnit", "PhysicalSizeYUnit", "PhysicalSizeZUnit",
    )  # fmt: skip
    out: dict[str, Any] = {k: pixels.attrib[k] for k in keys if k in pixels.attrib}
    names = [c.attrib.get("Name", "") for c in pixels if c.tag.endswith("Channel")]
    if any(names):
        out["channels"] = names
    return out
