"""vplab.segmentation on sam_tiny: same numbers as segment_anything.SamPredictor, batched
prompt sets in one decoder call, the embedding cache format, and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide

from vplab.errors import InvalidInput
from vplab.models import build_sam
from vplab.segmentation import DecodeResult, ImageEmbedding, PromptSegmenter, decode_torch
from vplab.segmentation import transforms as T

H, W = 96, 150  # non-square: resized to 164x256, so padding and cropping both matter
TOL = dict(atol=1e-4, rtol=1e-4)


def _image(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1).astype(np.int64)
    img[20:60, 30:90] = [200, 40, 40]
    return np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sam():
    return build_sam("sam_tiny")


@pytest.fixture(scope="module")
def seg(sam):
    return PromptSegmenter(sam)


@pytest.fixture(scope="module")
def image():
    return _image()


@pytest.fixture(scope="module")
def emb(seg, image):
    return seg.embed(image)


@pytest.fixture(scope="module")
def ref(sam, image):
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    return predictor


def _close(result: DecodeResult, masks, iou, low, b: int | None = None):
    """Compare one prompt set (``b``) or the whole batch with SamPredictor outputs."""
    got_logits = result.masks if b is None else result.masks[b]
    got_iou = result.iou_predictions if b is None else result.iou_predictions[b]
    got_low = result.low_res_logits if b is None else result.low_res_logits[b]
    torch.testing.assert_close(got_low, torch.as_tensor(low), **TOL)
    torch.testing.assert_close(got_iou, torch.as_tensor(iou), **TOL)
    torch.testing.assert_close(got_logits, torch.as_tensor(masks), **TOL)


# --- transforms -------------------------------------------------------------------------


def test_transforms_match_segment_anything(sam, image):
    rls = ResizeLongestSide(256)
    for h, w in [(96, 150), (150, 96), (33, 1000), (1, 7), (256, 256)]:
        assert T.preprocess_shape(h, w, 256) == rls.get_preprocess_shape(h, w, 256)
    resized = T.resize_longest_side(image, 256)
    assert np.array_equal(resized, rls.apply_image(image))
    x = T.image_to_tensor(resized)
    ours = T.normalize_pad(x, sam.pixel_mean, sam.pixel_std, 256)
    assert torch.equal(ours, sam.preprocess(x))
    pts = np.array([[[0.0, 0.0], [149.0, 95.0], [10.5, 3.25]]])
    assert np.allclose(T.apply_coords(pts, (H, W), 256), rls.apply_coords(pts, (H, W)))
    torch.testing.assert_close(
        T.apply_coords_torch(torch.tensor(pts), (H, W), 256),
        rls.apply_coords_torch(torch.tensor(pts), (H, W)),
    )
    boxes = np.array([[1, 2, 100, 90], [0, 0, 150, 96]])
    assert np.allclose(T.apply_boxes(boxes, (H, W), 256), rls.apply_boxes(boxes, (H, W)))
    low = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(
        T.postprocess_masks(low, (164, 256), (H, W), 256),
        sam.postprocess_masks(low, (164, 256), (H, W)),
    )


# --- embedding ---------------------------------------------------------------------------


def test_embed_matches_sam_predictor(emb, ref):
    assert emb.features.shape == (1, 256, 16, 16)
    assert emb.original_size == (H, W) and emb.input_size == (164, 256)
    assert emb.input_size == tuple(ref.input_size)
    torch.testing.assert_close(emb.features, ref.features, atol=1e-5, rtol=1e-5)


def test_embed_batch_matches_single(seg, emb):
    other = _image(70, 40, seed=3)
    out = seg.embed_batch([_image(), other, _image()], batch_size=2)
    assert len(out) == 3 and out[1].original_size == (70, 40) and out[1].input_size == (256, 146)
    torch.testing.assert_close(out[0].features, emb.features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[2].features, emb.features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1].features, seg.embed(other).features, atol=1e-4, rtol=1e-4)


def test_embedding_bytes_roundtrip(emb):
    blob = emb.to_bytes()
    assert len(blob) < emb.features.numel() * 2 + 1024  # bf16
    back = ImageEmbedding.from_bytes(blob)
    assert back.original_size == emb.original_size and back.input_size == emb.input_size
    assert back.features.dtype == torch.float32 and back.features.shape == emb.features.shape
    torch.testing.assert_close(back.features, emb.features, atol=0.0, rtol=1 / 128)
    exact = ImageEmbedding.from_bytes(emb.to_bytes(dtype=torch.float32))
    assert torch.equal(exact.features, emb.features)
    for bad in (b"", b"garbage" * 10, blob[: len(blob) // 2]):
        with pytest.raises(InvalidInput, match="not a valid"):
            ImageEmbedding.from_bytes(bad)


def test_decode_from_cached_embedding(seg, emb):
    pts, lab = np.array([[[50.0, 40.0]]]), np.array([[1]])
    direct = seg.decode(emb, pts, lab, return_logits=True)
    cached = seg.decode(ImageEmbedding.from_bytes(emb.to_bytes()), pts, lab, return_logits=True)
    torch.testing.assert_close(cached.iou_predictions, direct.iou_predictions, atol=0.05, rtol=0.05)


# --- decode == SamPredictor ------------------------------------------------------------


@pytest.mark.parametrize("multimask", [True, False])
def test_single_point(seg, emb, ref, multimask):
    pts, lab = np.array([[60.0, 40.0]]), np.array([1])
    masks, iou, low = ref.predict(pts, lab, multimask_output=multimask, return_logits=True)
    out = seg.decode(emb, pts[None], lab[None], multimask_output=multimask, return_logits=True)
    m = 3 if multimask else 1
    assert out.masks.shape == (1, m, H, W) and out.iou_predictions.shape == (1, m)
    assert out.low_res_logits.shape == (1, m, 64, 64)
    _close(out, masks, iou, low, b=0)
    # bool masks are the logits thresholded at 0
    binary = seg.decode(emb, pts[None], lab[None], multimask_output=multimask)
    assert binary.masks.dtype == torch.bool
    assert torch.equal(binary.masks, out.masks > 0)
    # an unbatched (N, 2) set is the same single prompt set
    same = seg.decode(emb, pts, lab, multimask_output=multimask, return_logits=True)
    torch.testing.assert_close(same.masks, out.masks)


def test_positive_and_negative_points(seg, emb, ref):
    pts, lab = np.array([[60.0, 40.0], [120.0, 80.0], [5.0, 90.0]]), np.array([1, 0, 0])
    masks, iou, low = ref.predict(pts, lab, return_logits=True)
    _close(seg.decode(emb, pts[None], lab[None], return_logits=True), masks, iou, low, b=0)


def test_box_and_box_plus_points(seg, emb, ref):
    box = np.array([25.0, 15.0, 95.0, 65.0])
    masks, iou, low = ref.predict(box=box, return_logits=True)
    _close(seg.decode(emb, boxes=box[None], return_logits=True), masks, iou, low, b=0)
    pts, lab = np.array([[60.0, 40.0], [90.0, 20.0]]), np.array([1, 0])
    masks, iou, low = ref.predict(pts, lab, box=box, multimask_output=False, return_logits=True)
    out = seg.decode(
        emb, pts[None], lab[None], boxes=box, multimask_output=False, return_logits=True
    )
    _close(out, masks, iou, low, b=0)


def test_previous_mask_input(seg, emb, ref):
    pts, lab = np.array([[60.0, 40.0]]), np.array([1])
    _, iou0, low0 = ref.predict(pts, lab, return_logits=True)
    prev = low0[int(np.argmax(iou0))][None]  # (1, 64, 64)
    masks, iou, low = ref.predict(
        pts, lab, mask_input=prev, multimask_output=False, return_logits=True
    )
    first = seg.decode(emb, pts[None], lab[None])
    best = first.low_res_logits[0, first.iou_predictions[0].argmax()][None, None]  # (1, 1, 64, 64)
    out = seg.decode(
        emb, pts[None], lab[None], mask_input=best, multimask_output=False, return_logits=True
    )
    _close(out, masks, iou, low, b=0)
    # mask alone is a valid prompt too
    masks, iou, low = ref.predict(mask_input=prev, return_logits=True)
    _close(seg.decode(emb, mask_input=prev[None], return_logits=True), masks, iou, low, b=0)


def test_batch_of_prompt_sets_in_one_call(seg, emb, ref, sam, monkeypatch):
    rng = np.random.default_rng(1)
    B = 5
    pts = np.stack([rng.uniform(0, W, B), rng.uniform(0, H, B)], -1)[:, None, :]  # (B, 1, 2)
    negs = np.broadcast_to(np.array([[2.0, 3.0], [140.0, 90.0]]), (B, 2, 2))
    pts = np.concatenate([pts, negs], 1)  # (B, 3, 2): one positive + two negatives each
    lab = np.tile(np.array([1, 0, 0]), (B, 1))
    boxes = np.array([[10, 10, 80, 60]] * B, dtype=float) + rng.uniform(0, 5, (B, 4))

    calls = []
    original = sam.mask_decoder.forward
    monkeypatch.setattr(
        sam.mask_decoder, "forward", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    out = seg.decode(emb, pts, lab, boxes=boxes, return_logits=True)
    assert len(calls) == 1  # all B prompt sets in ONE decoder call
    assert out.masks.shape == (B, 3, H, W) and out.iou_predictions.shape == (B, 3)
    for b in range(B):
        masks, iou, low = ref.predict(pts[b], lab[b], box=boxes[b], return_logits=True)
        _close(out, masks, iou, low, b=b)
    # and the batched reference call agrees as a whole
    rls = ref.transform
    masks, iou, low = ref.predict_torch(
        torch.as_tensor(rls.apply_coords(pts, (H, W)), dtype=torch.float),
        torch.as_tensor(lab, dtype=torch.int),
        torch.as_tensor(rls.apply_boxes(boxes, (H, W)), dtype=torch.float),
        return_logits=True,
    )
    _close(out, masks, iou, low)


def test_ragged_prompt_sets_are_padded_with_minus_one(seg, emb, ref):
    sets = [
        np.array([[60.0, 40.0]]),
        np.array([[60.0, 40.0], [120.0, 80.0], [10.0, 10.0]]),
        np.array([[20.0, 30.0], [100.0, 50.0]]),
    ]
    labels = [np.array([1]), np.array([1, 0, 0]), np.array([1, 1])]
    out = seg.decode(emb, sets, labels, return_logits=True)
    assert out.masks.shape == (3, 3, H, W)
    for b, (c, lab) in enumerate(zip(sets, labels)):
        pad = 3 - len(c)
        c_pad = np.concatenate([c, np.zeros((pad, 2))])
        l_pad = np.concatenate(
            [lab, -np.ones(pad, dtype=int)]
        )  # SamPredictor with SAM's own padding label
        masks, iou, low = ref.predict(c_pad, l_pad, return_logits=True)
        _close(out, masks, iou, low, b=b)
    # the longest set needs no padding: identical to its unpadded single decode
    alone = seg.decode(emb, sets[1], labels[1], return_logits=True)
    torch.testing.assert_close(out.low_res_logits[1], alone.low_res_logits[0], **TOL)


# --- decode_torch: the trainer's differentiable path -------------------------------------


def test_decode_torch_has_gradients(sam, emb):
    sam.zero_grad()
    coords = torch.tensor([[[100.0, 60.0]]])
    labels = torch.tensor([[1]])
    low, iou = decode_torch(sam, emb.features, coords, labels, multimask_output=False)
    assert low.shape == (1, 1, 64, 64) and iou.shape == (1, 1)
    (low.mean() + iou.sum()).backward()
    grads = [p.grad for p in sam.mask_decoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    sam.zero_grad(set_to_none=True)
    with pytest.raises(InvalidInput, match="one image per decode"):
        decode_torch(
            sam, emb.features.repeat(2, 1, 1, 1), coords.repeat(2, 1, 1), labels.repeat(2, 1)
        )


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "no prompt given"),
        ({"point_coords": np.array([[[10.0, 10.0]]])}, "given together"),
        (
            {"point_coords": np.array([[[151.0, 10.0]]]), "point_labels": np.array([[1]])},
            "outside the 150x96",
        ),
        ({"point_coords": np.array([[[10.0, -1.0]]]), "point_labels": np.array([[1]])}, "outside"),
        (
            {"point_coords": np.array([[[10.0, 10.0]]]), "point_labels": np.array([[2]])},
            "must be 0 or 1",
        ),
        (
            {"point_coords": np.array([[[10.0, 10.0]]]), "point_labels": np.array([[-1]])},
            "reserved for padding",
        ),
        (
            {"point_coords": np.array([[[10.0, 10.0]]]), "point_labels": np.array([[0.5]])},
            "integers",
        ),
        ({"point_coords": np.array([[[10.0, np.nan]]]), "point_labels": np.array([[1]])}, "NaN"),
        (
            {"point_coords": np.array([[[10.0, 10.0, 1.0]]]), "point_labels": np.array([[1]])},
            r"\(B, N, 2\)",
        ),
        (
            {"point_coords": np.array([[[10.0, 10.0]]]), "point_labels": np.array([[1, 0]])},
            "point_labels must have shape",
        ),
        (
            {"point_coords": [np.array([[1.0, 2.0]])], "point_labels": [np.array([1, 1])]},
            r"point_labels\[0\]",
        ),
        (
            {"point_coords": [np.array([1.0, 2.0, 3.0])], "point_labels": [np.array([1])]},
            r"point_coords\[0\] must have shape",
        ),
        ({"point_coords": np.array([["a", "b"]]), "point_labels": np.array([1])}, "numeric"),
        ({"boxes": np.array([50.0, 10.0, 20.0, 40.0])}, "inverted"),
        ({"boxes": np.array([[0.0, 0.0, 151.0, 40.0]])}, "boxes.*outside"),
        ({"boxes": np.array([[0.0, 0.0, 10.0]])}, r"boxes must have shape"),
        (
            {"mask_input": np.zeros((1, 1, 256, 256))},
            r"mask_input must have shape \(B, 1, 64, 64\)",
        ),
        ({"mask_input": np.zeros((1, 64, 64))}, "mask_input must have shape"),
        (
            {
                "point_coords": np.zeros((2, 1, 2)),
                "point_labels": np.ones((2, 1)),
                "boxes": np.array([[0, 0, 5, 5]] * 3),
            },
            "batch sizes differ",
        ),
        ({"point_coords": np.zeros((0, 1, 2)), "point_labels": np.ones((0, 1))}, "batch size 0"),
    ],
)
def test_bad_prompts_raise_invalid_input(seg, emb, kwargs, match):
    with pytest.raises(InvalidInput, match=match):
        seg.decode(emb, **kwargs)


def test_bad_images_and_embeddings(seg, emb):
    for bad in (
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        [[1]],
    ):
        with pytest.raises(InvalidInput, match="HxWx3 uint8"):
            seg.embed(bad)
    with pytest.raises(InvalidInput, match="empty"):
        seg.embed(np.zeros((0, 10, 3), np.uint8))
    wrong = ImageEmbedding(torch.zeros(1, 256, 64, 64), (H, W), (164, 256))
    with pytest.raises(InvalidInput, match="different SAM model"):
        seg.decode(wrong, np.array([[[1.0, 1.0]]]), np.array([[1]]))
    with pytest.raises(InvalidInput, match="ImageEmbedding"):
        seg.decode(emb.features, np.array([[[1.0, 1.0]]]), np.array([[1]]))
