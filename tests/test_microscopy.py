"""Microscopy TIFFs: one decoding rule (vplab.microscopy) on every path, metadata kept on
the image record, clear errors for what it cannot read."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from vplab.datasets import DatasetStore
from vplab.errors import InvalidInput, PayloadTooLarge
from vplab.images import decode_image
from vplab.microscopy import P_HIGH, P_LOW
from vplab.settings import Settings
from vplab.storage import LocalStore
from vplab.tenancy import create_tenant


def _tiff(arr: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kwargs)
    return buf.getvalue()


def _reference(channel: np.ndarray) -> np.ndarray:
    """The rule, written out independently: percentiles 1 / 99.8 -> 0..255, clipped."""
    x = channel.astype(np.float64)
    lo, hi = np.percentile(x[np.isfinite(x)], [P_LOW, P_HIGH])
    x = np.where(np.isfinite(x), x, lo)
    return np.clip(np.rint((x - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


def test_16bit_grey_is_scaled_by_percentiles_into_all_three_channels():
    rng = np.random.default_rng(0)
    arr = rng.integers(100, 4000, (40, 50)).astype(np.uint16)  # a 12-bit camera
    out = decode_image(_tiff(arr))
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], _reference(arr))
    assert np.array_equal(out[..., 0], out[..., 2])
    assert out.max() == 255 and out.min() == 0  # the range is used, unlike a /257 scaling


def test_float_with_nan_and_two_channels_make_a_composite():
    rng = np.random.default_rng(1)
    arr = rng.normal(0, 1, (2, 30, 20)).astype(np.float32)
    arr[0, 0, 0] = np.nan
    arr[1, 5, 5] = np.inf
    out = decode_image(_tiff(arr, photometric="minisblack", metadata={"axes": "CYX"}))
    assert out.shape == (30, 20, 3)
    assert np.array_equal(out[..., 0], _reference(arr[0]))
    assert np.array_equal(out[..., 1], _reference(arr[1]))
    assert not out[..., 2].any()


def test_a_z_stack_uses_its_first_plane_and_8bit_rgb_is_kept():
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 60000, (5, 16, 24)).astype(np.uint16)
    out = decode_image(_tiff(stack, metadata={"axes": "ZYX"}))
    assert np.array_equal(out[..., 0], _reference(stack[0]))
    rgb = rng.integers(0, 255, (16, 24, 3)).astype(np.uint8)
    assert np.array_equal(decode_image(_tiff(rgb, photometric="rgb")), rgb)


def test_ome_tiff_metadata_is_kept_on_the_image_record(tmp_path):
    arr = np.arange(2 * 20 * 30, dtype=np.uint16).reshape(2, 20, 30)
    data = _tiff(
        arr,
        ome=True,
        photometric="minisblack",
        metadata={
            "axes": "CYX",
            "PhysicalSizeX": 0.65,
            "PhysicalSizeY": 0.65,
            "Channel": {"Name": ["DAPI", "GFP"]},
        },
    )
    settings = Settings(data_dir=tmp_path)
    datasets = DatasetStore(LocalStore(tmp_path / "store"), settings)
    tenant, _ = create_tenant(datasets.store, "lab", "pepper")
    ds = datasets.create_dataset(tenant.id, "nuclei")
    image_id = datasets.add_image(tenant.id, ds.id, data, "cells.ome.tif")
    meta = datasets.image_info(tenant.id, ds.id, image_id).metadata
    assert meta["format"] == "OME-TIFF" and meta["axes"] == "CYX" and meta["dtype"] == "uint16"
    assert float(meta["ome"]["PhysicalSizeX"]) == pytest.approx(0.65)
    assert meta["ome"]["channels"] == ["DAPI", "GFP"]
    assert "percentiles" in meta["normalisation"]
    assert datasets.get_image(tenant.id, image_id).shape == (20, 30, 3)  # the same rule


def test_bad_and_exotic_tiffs_are_clear_errors():
    with pytest.raises(InvalidInput, match="not a readable TIFF"):
        decode_image(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(InvalidInput, match="not supported"):
        decode_image(_tiff(np.zeros((8, 8), np.complex64)))
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode_image(_tiff(np.zeros((100, 100), np.uint16)), max_pixels=5000)
    with pytest.raises(PayloadTooLarge, match="bytes"):
        decode_image(_tiff(np.zeros((100, 100), np.uint16)), max_bytes=1000)


def _datasets(tmp_path):
    datasets = DatasetStore(LocalStore(tmp_path / "store"), Settings(data_dir=tmp_path))
    tenant, _ = create_tenant(datasets.store, "lab", "pepper")
    return datasets, tenant.id


def test_a_datasets_channels_setting_stores_the_chosen_channel_or_composite(tmp_path):
    import hashlib

    rng = np.random.default_rng(4)
    arr = rng.integers(0, 60000, (4, 24, 32)).astype(np.uint16)  # C, Y, X: 4 channels
    data = _tiff(arr, photometric="minisblack", metadata={"axes": "CYX"})
    datasets, t = _datasets(tmp_path)
    default = datasets.create_dataset(t, "default")
    one = datasets.create_dataset(t, "nuclei", channels=[2])
    three = datasets.create_dataset(t, "composite", channels=[3, 0, 1])
    assert datasets.get_dataset(t, one.id).channels == (2,)
    plain_id = datasets.add_image(t, default.id, data, "a.tif")
    assert plain_id == hashlib.sha256(data).hexdigest()  # no setting: stored as uploaded
    first3 = datasets.get_image(t, plain_id)
    assert all(np.array_equal(first3[..., c], _reference(arr[c])) for c in range(3))
    grey_id = datasets.add_image(t, one.id, data, "a.tif")
    assert grey_id != plain_id
    grey = datasets.get_image(t, grey_id)
    assert all(np.array_equal(grey[..., c], _reference(arr[2])) for c in range(3))
    meta = datasets.image_info(t, one.id, grey_id).metadata
    assert meta["channels"] == [2] and meta["source_sha256"] == plain_id
    assert meta["shape"] == [4, 24, 32]  # the uploaded file's, not the stored one's
    composite = datasets.get_image(t, datasets.add_image(t, three.id, data, "a.tif"))
    for c, source in enumerate([3, 0, 1]):
        assert np.array_equal(composite[..., c], _reference(arr[source]))
    # The same file again: the same stored bytes, so the same image (idempotent).
    assert datasets.put_image(t, one.id, data, "a.tif") == (grey_id, False)
    # 8-bit PNGs are kept as they are.
    from vplab.images import encode_png

    png = encode_png(rng.integers(0, 255, (8, 8, 3)).astype(np.uint8))
    assert datasets.add_image(t, one.id, png) == hashlib.sha256(png).hexdigest()


def test_channels_settings_are_checked_and_a_missing_channel_writes_nothing(tmp_path):
    datasets, t = _datasets(tmp_path)
    for bad in ([0, 1, 2, 3], [1, 1], [-1], [64], [True], "2"):
        with pytest.raises(InvalidInput, match="channels"):
            datasets.create_dataset(t, "x", channels=bad)
    assert datasets.list_datasets(t) == []
    ds = datasets.create_dataset(t, "two", channels=[3])
    two = _tiff(np.zeros((2, 8, 8), np.uint16), photometric="minisblack", metadata={"axes": "CYX"})
    with pytest.raises(InvalidInput, match=r"2 channels \(0\.\.1\).*names \[3\]"):
        datasets.add_image(t, ds.id, two)
    assert datasets.list_images(t, ds.id) == []
    assert datasets.update_dataset(t, ds.id, channels=[1, 0]).channels == (1, 0)
    assert datasets.update_dataset(t, ds.id, name="renamed").channels == (1, 0)  # kept
    assert datasets.update_dataset(t, ds.id, channels=[]).channels is None  # the default again
    with pytest.raises(InvalidInput):
        datasets.update_dataset(t, ds.id, channels=[9, 9])
