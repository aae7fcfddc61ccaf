"""vplab.masks: RLE wire format, PNG masks / label maps, metrics."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from vplab.errors import InvalidInput, PayloadTooLarge
from vplab.masks import (
    decode_rle,
    dice,
    encode_binary_mask,
    encode_label_map,
    encode_rle,
    iou,
    mean_class_iou,
    mean_iou,
    per_class_iou,
    read_binary_mask,
    read_label_map,
    read_label_png,
    rle_area,
)

# pycocotools' decode trips numpy 2's __array__(copy=) deprecation; vplab.masks.rle
# filters it process-wide, but pytest re-enables DeprecationWarnings per test.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _random_mask(h=37, w=53, seed=0):
    return np.random.default_rng(seed).random((h, w)) > 0.6


# --- RLE --------------------------------------------------------------------------------------


def test_rle_round_trip_random_mask():
    m = _random_mask()
    rle = encode_rle(m)
    assert rle["size"] == [37, 53]
    assert isinstance(rle["counts"], str)
    out = decode_rle(rle)
    assert out.dtype == bool and out.shape == m.shape
    np.testing.assert_array_equal(out, m)
    assert rle_area(rle) == int(m.sum())


@pytest.mark.parametrize("fill", [0, 1])
def test_rle_empty_and_full(fill):
    m = np.full((8, 5), fill, np.uint8)
    rle = encode_rle(m)
    np.testing.assert_array_equal(decode_rle(rle, shape=(8, 5)), m.astype(bool))
    assert rle_area(rle) == 40 * fill


def test_rle_accepts_bytes_numeric_and_matches_pycocotools():
    m = _random_mask(seed=1).astype(np.float32) * 7  # nonzero = foreground
    ref = mask_utils.encode(np.asfortranarray((m != 0).astype(np.uint8)))
    rle = encode_rle(m)
    assert rle["counts"] == ref["counts"].decode()
    np.testing.assert_array_equal(decode_rle({"size": (37, 53), "counts": ref["counts"]}), m != 0)


def test_rle_same_for_every_layout_and_dtype():
    import torch

    from vplab.inference.segmentation import _column_major

    m = _random_mask(seed=2)  # bool, row-major
    ref = encode_rle(m)
    col = _column_major(torch.from_numpy(m))
    assert col.flags.f_contiguous and np.array_equal(col, m)
    strided = np.zeros((37, 106), bool)[:, ::2]
    strided[...] = m
    for variant in (
        col,
        np.asfortranarray(m),
        strided,
        m.astype(np.uint8) * 255,
        m.astype(np.int64) - 0,
    ):
        assert encode_rle(variant) == ref
    stack = _column_major(torch.from_numpy(np.stack([m, ~m])))
    assert [encode_rle(x)["counts"] for x in stack] == [ref["counts"], encode_rle(~m)["counts"]]


def test_rle_is_json_safe():
    import json

    rle = encode_rle(_random_mask())
    assert decode_rle(json.loads(json.dumps(rle))).shape == (37, 53)


def test_rle_wrong_expected_shape():
    with pytest.raises(InvalidInput, match="does not match the expected shape"):
        decode_rle(encode_rle(np.zeros((4, 5), bool)), shape=(5, 4))


GOOD = encode_rle(np.eye(4, 5, dtype=bool))


@pytest.mark.parametrize(
    "rle, msg",
    [
        ("not a dict", "must be an object"),
        ({"counts": GOOD["counts"]}, "'size'"),
        ({"size": [4], "counts": GOOD["counts"]}, "'size'"),
        ({"size": [4.0, 5], "counts": GOOD["counts"]}, "'size'"),
        ({"size": [True, 5], "counts": GOOD["counts"]}, "'size'"),
        ({"size": [0, 5], "counts": ""}, "out of range"),
        ({"size": [4, 5]}, "'counts'"),
        ({"size": [4, 5], "counts": [1, 2, 3]}, "'counts'"),
        ({"size": [4, 5], "counts": 17}, "'counts'"),
        ({"size": [4, 5], "counts": ""}, "cover 0 pixels"),
        ({"size": [4, 5], "counts": "0"}, "cover"),  # too short: would decode garbage
        ({"size": [4, 5], "counts": "1000000"}, "cover"),
        ({"size": [4, 5], "counts": GOOD["counts"] + "3"}, "cover"),
        ({"size": [5, 4], "counts": "zzz"}, "invalid character"),
        ({"size": [5, 4], "counts": "é"}, "ASCII"),
        ({"size": [5, 4], "counts": "o"}, "truncated"),  # continuation bit, then nothing
        ({"size": [4, 5], "counts": "0o"}, "truncated"),
    ],
)
def test_malformed_rle_rejected(rle, msg):
    with pytest.raises(InvalidInput, match=msg):
        decode_rle(rle)


def test_negative_run_rejected():
    # "2" "2" then delta -3 on the third run -> -1: a negative run length.
    # 0x1D is -3 as one sign-extended 5-bit group.
    bad = {"size": [1, 20], "counts": "22" + chr(48 + 0x1D)}
    with pytest.raises(InvalidInput, match="negative"):
        decode_rle(bad)


@pytest.mark.parametrize(
    "bad", [np.zeros((3,)), np.zeros((2, 2, 2)), np.zeros((0, 3)), np.array([["a"]])]
)
def test_encode_rle_bad_input(bad):
    with pytest.raises(InvalidInput):
        encode_rle(bad)


# --- PNG ---------------------------------------------------------------------------------------


def test_binary_mask_png_is_0_255_and_round_trips():
    m = _random_mask(seed=2)
    data = encode_binary_mask(m)
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.mode == "L"
    assert set(np.unique(np.asarray(img)).tolist()) == {0, 255}
    np.testing.assert_array_equal(read_binary_mask(data), m)


def test_read_binary_mask_from_path_and_other_encodings(tmp_path):
    m = _random_mask(seed=3)
    p = tmp_path / "m.png"
    Image.fromarray(m.astype(np.uint8)).save(p)  # 0/1 encoding
    np.testing.assert_array_equal(read_binary_mask(p), m)
    np.testing.assert_array_equal(read_binary_mask(str(p)), m)
    rgba = np.zeros(m.shape + (4,), np.uint8)
    rgba[m] = (200, 0, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, "PNG")
    np.testing.assert_array_equal(read_binary_mask(buf.getvalue()), m)


def test_empty_and_full_binary_masks():
    for m in (np.zeros((6, 7), bool), np.ones((6, 7), bool)):
        np.testing.assert_array_equal(read_binary_mask(encode_binary_mask(m)), m)


def test_label_map_uint8_and_uint16():
    rng = np.random.default_rng(4)
    small = rng.integers(0, 5, (20, 30))
    data = encode_label_map(small)
    assert Image.open(io.BytesIO(data)).mode == "L"
    out = read_label_map(data)
    assert np.issubdtype(out.dtype, np.integer)
    np.testing.assert_array_equal(out, small)

    big = rng.integers(0, 1000, (20, 30)).astype(np.int64)
    big[0, 0] = 65535
    data = encode_label_map(big)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    np.testing.assert_array_equal(read_label_map(data), big)


def test_label_map_palette_png_gives_indices():
    idx = np.random.default_rng(5).integers(0, 3, (9, 11)).astype(np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    np.testing.assert_array_equal(read_label_map(buf.getvalue()), idx)


@pytest.mark.parametrize(
    "bad, msg",
    [
        (np.array([[-1, 0]]), "0..65535"),
        (np.array([[70000, 0]]), "0..65535"),
        (np.zeros((2, 2), np.float32), "integer dtype"),
        (np.zeros((2, 2, 3), np.uint8), "2-D"),
    ],
)
def test_encode_label_map_rejects(bad, msg):
    with pytest.raises(InvalidInput, match=msg):
        encode_label_map(bad)


def _rgb_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_one_acceptance_policy_for_masks_and_label_maps():
    # Both readers are read_label_png: what one accepts, the other does too.
    grey = np.zeros((4, 4, 3), np.uint8)
    grey[1, 1] = 3  # grey RGB: the grey value is the id
    np.testing.assert_array_equal(read_label_map(_rgb_png(grey))[1, 1], 3)
    assert read_binary_mask(_rgb_png(grey)).sum() == 1
    two = np.zeros((4, 4, 3), np.uint8)
    two[:2] = (200, 10, 0)  # a drawing tool's mask: black + one colour -> 0/1
    np.testing.assert_array_equal(read_label_map(_rgb_png(two)), (two.any(2)).astype(np.int32))
    several = two.copy()
    several[3, 3] = (0, 0, 255)
    for reader in (read_label_map, read_binary_mask, read_label_png):
        with pytest.raises(InvalidInput, match="several colours"):
            reader(_rgb_png(several))


def test_corrupt_or_non_png_rejected(tmp_path):
    good = encode_binary_mask(_random_mask(64, 64, seed=6))  # incompressible: cuts hit IDAT
    for bad in (b"", b"not a png at all", good[:40], good[: len(good) // 2]):
        with pytest.raises(InvalidInput, match="mask PNG is not a readable image"):
            read_binary_mask(bad)
        with pytest.raises(InvalidInput, match="label map PNG is not a readable image"):
            read_label_map(bad)
    jpeg = io.BytesIO()
    Image.new("L", (4, 4)).save(jpeg, "JPEG")
    with pytest.raises(InvalidInput):  # lossy formats would corrupt class ids
        read_label_map(jpeg.getvalue())
    with pytest.raises(InvalidInput, match="cannot be read"):
        read_binary_mask(tmp_path / "missing.png")


def test_mask_png_limits():
    data = encode_binary_mask(np.ones((10, 10), bool))
    with pytest.raises(PayloadTooLarge, match="pixels"):
        read_binary_mask(data, max_pixels=99)
    with pytest.raises(PayloadTooLarge, match="bytes"):
        read_label_map(data, max_bytes=10)


# --- metrics -------------------------------------------------------------------------------------


def test_known_iou_and_dice():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:, :2] = True  # 8 px
    b[:, 1:3] = True  # 8 px, overlap 4
    assert iou(a, b) == pytest.approx(4 / 12)
    assert dice(a, b) == pytest.approx(8 / 16)
    assert iou(a, a) == 1.0 and dice(a, a) == 1.0
    assert iou(a, ~a) == 0.0 and dice(a, ~a) == 0.0
    assert iou(a.astype(np.uint8) * 255, b) == pytest.approx(1 / 3)  # nonzero = foreground


def test_both_empty_is_one_and_one_empty_is_zero():
    z = np.zeros((3, 3), bool)
    assert iou(z, z) == 1.0 and dice(z, z) == 1.0
    assert iou(z, ~z) == 0.0 and dice(~z, z) == 0.0


def test_shape_mismatch_rejected():
    with pytest.raises(InvalidInput, match="shape"):
        iou(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(InvalidInput, match="shape"):
        dice(np.zeros((3, 3)), np.zeros((9,)))
    with pytest.raises(InvalidInput, match="shape"):
        per_class_iou([(np.zeros((2, 2), int), np.zeros((2, 3), int))])


def test_mean_iou():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    z = np.zeros((4, 4), bool)
    assert mean_iou([(a, a), (a, ~a), (z, z)]) == pytest.approx(2 / 3)
    with pytest.raises(InvalidInput, match="at least one"):
        mean_iou([])


def test_per_class_iou_known_values():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0]])
    scores = per_class_iou([(pred, gt)])
    # class 0: gt {00,01,10,11}, pred {00,10,11,22,23}: inter 3, union 6
    assert scores[0] == pytest.approx(3 / 6)
    assert scores[1] == pytest.approx(4 / 5)
    assert scores[2] == pytest.approx(2 / 4)
    assert mean_class_iou([(pred, gt)]) == pytest.approx((0.5 + 0.8 + 0.5) / 3)
    # restricting classes (e.g. drop background); an absent class scores 1.0
    assert per_class_iou([(pred, gt)], classes=[1, 7]) == {1: pytest.approx(0.8), 7: 1.0}


def test_per_class_iou_accumulates_over_pairs_and_ignores():
    g1 = np.array([[1, 1, 0, 0]])
    p1 = np.array([[1, 0, 0, 0]])
    g2 = np.array([[1, 255, 0, 0]])
    p2 = np.array([[1, 1, 0, 0]])
    s = per_class_iou([(p1, g1), (p2, g2)], ignore_index=255)
    # class 1: inter 1+1, union 2+1 (the pixel with gt 255 is ignored)
    assert s[1] == pytest.approx(2 / 3)
    assert 255 not in s
    # uint16 ids do not blow up a dense confusion matrix
    big = np.array([[65535, 0]], np.uint16)
    assert per_class_iou([(big, big)]) == {0: 1.0, 65535: 1.0}
    with pytest.raises(InvalidInput, match="integer"):
        per_class_iou([(np.zeros((2, 2)), np.zeros((2, 2)))])
    with pytest.raises(InvalidInput, match="at least one"):
        per_class_iou([])


# --------------------------------------------------------------- geometry (scipy.ndimage)


def _depth_by_erosion(m: np.ndarray) -> np.ndarray:
    """The definition: how many 3x3 erosions (the border outside) a pixel survives."""
    out = np.zeros(m.shape, np.float32)
    alive = m.copy()
    while alive.any():
        out += alive
        p = np.pad(alive, 1)
        alive = np.all(
            [p[dy : dy + m.shape[0], dx : dx + m.shape[1]] for dy in range(3) for dx in range(3)],
            axis=0,
        )
    return out


def _components_by_flood(m: np.ndarray) -> np.ndarray:
    """The definition: 8-connected flood fill from each unlabelled pixel in raster order."""
    lab = np.zeros(m.shape, np.int64)
    n = 0
    for y0, x0 in zip(*np.nonzero(m), strict=True):
        if lab[y0, x0]:
            continue
        n += 1
        stack = [(y0, x0)]
        lab[y0, x0] = n
        while stack:
            y, x = stack.pop()
            for yy in range(max(0, y - 1), min(m.shape[0], y + 2)):
                for xx in range(max(0, x - 1), min(m.shape[1], x + 2)):
                    if m[yy, xx] and not lab[yy, xx]:
                        lab[yy, xx] = n
                        stack.append((yy, xx))
    return lab


def test_depth_and_components_match_their_definitions():
    import torch

    from vplab.masks.geometry import components, deepest_point, depth

    rng = np.random.default_rng(0)
    masks = [rng.random(rng.integers(1, 40, 2)) < rng.random() for _ in range(30)]
    masks += [np.ones((9, 12), bool), np.zeros((4, 4), bool), np.eye(7, dtype=bool)]
    for m in masks:
        t = torch.as_tensor(m)
        assert np.array_equal(depth(t[None])[0].numpy(), _depth_by_erosion(m))
        labels, n = components(t)
        ref = _components_by_flood(m)
        assert n == ref.max() and np.array_equal(labels.numpy(), ref)
    assert depth(torch.ones(1, 300, 300, dtype=torch.bool)).max() == 128  # capped
    ring = np.ones((9, 9), bool)
    ring[4, 4] = False
    assert deepest_point(ring) == (1.5, 1.5)  # first of the depth-2 pixels, raster order
    assert deepest_point(np.zeros((3, 3), bool)) is None
