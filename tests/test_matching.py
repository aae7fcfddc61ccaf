"""Visual prompting (vplab.matching): geometry, patch masks, matchers, points, pipeline.

Part A uses CONSTRUCTED feature maps where the right answer is known: a target grid with
an "object" whose features are close to the reference object, a "distractor" that is
somewhat similar, plain background, and padded cells whose features are IDENTICAL to the
reference (they must still never be matched or picked).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vplab.errors import InvalidInput
from vplab.matching import (
    LetterboxGrid,
    masked_features,
    patch_mask,
    prototype_match,
    select_points,
    soft_match,
)

C = 32
GRID = 16
PATCH = 14  # padded frame 224 px


def _unit(v: torch.Tensor) -> torch.Tensor:
    return F.normalize(v, dim=-1)


@pytest.fixture(scope="module")
def feats():
    """Orthonormal 'object', 'second object', 'background'; distractor at cos 0.3 to object."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(C, C, generator=g))
    obj, obj2, bg, other = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    distractor = _unit(0.3 * obj + (1 - 0.09) ** 0.5 * other)
    return {"obj": obj, "obj2": obj2, "bg": bg, "distractor": distractor}


def _noisy(
    base: torch.Tensor, shape: tuple[int, int], seed: int, noise: float = 0.05
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return _unit(base + noise * torch.randn(*shape, C, generator=g))


def _cells_box(r0, r1, c0, c1):
    m = torch.zeros(GRID, GRID, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


# Target: 160 x 224 px -> scale 1, rows 0..11 valid (160 / 14 = 11.4), rows 12..15 padded.
TGT_HW = (160, 224)
OBJ = (3, 7, 3, 7)  # cell box rows 3..6, cols 3..6 -> pixels y, x in [42, 98)
OBJ2 = (8, 12, 8, 12)  # second object, same size (only used with the second shot)
DIS = (3, 7, 10, 14)  # distractor


def _target(feats, with_obj2: bool = False, seed: int = 1):
    grid = LetterboxGrid.for_patches(TGT_HW, GRID, PATCH)
    valid = grid.valid_mask()
    f = _noisy(feats["bg"], (GRID, GRID), seed)
    f[_cells_box(*OBJ)] = _noisy(feats["obj"], (16,), seed + 1).reshape(16, C)
    f[_cells_box(*DIS)] = _noisy(feats["distractor"], (16,), seed + 2).reshape(16, C)
    if with_obj2:
        f[_cells_box(*OBJ2)] = _noisy(feats["obj2"], (16,), seed + 3).reshape(16, C)
    # Padded cells: exactly the reference object feature, the worst case for leakage.
    f[~valid] = feats["obj"]
    return grid, f, valid


def _reference(feats, obj_key: str, hw=(300, 200), box_px=(60, 160, 50, 150), seed: int = 7):
    """Reference image of another size and scale; features built from the pixel mask."""
    grid = LetterboxGrid.for_patches(hw, GRID, PATCH)
    mask = np.zeros(hw, dtype=bool)
    y0, y1, x0, x1 = box_px
    mask[y0:y1, x0:x1] = True
    pm = patch_mask(mask, grid)
    f = _noisy(feats["bg"], (GRID, GRID), seed)
    f[pm] = _noisy(feats[obj_key], (int(pm.sum()),), seed + 1)
    return grid, mask, pm, f


def _in_box_px(xy: torch.Tensor, box, cell_px: float = 14.0) -> torch.Tensor:
    r0, r1, c0, c1 = box
    x, y = xy[:, 0], xy[:, 1]
    return (x >= c0 * cell_px) & (x < c1 * cell_px) & (y >= r0 * cell_px) & (y < r1 * cell_px)


# ---------------------------------------------------------------- geometry


def test_letterbox_geometry_and_cell_centres():
    grid = LetterboxGrid.for_patches((320, 448), GRID, PATCH)  # scale 0.5
    assert grid.scale == pytest.approx(0.5)
    assert grid.resized_hw == (160, 224)
    assert grid.valid_hw == (12, 16)
    valid = grid.valid_mask()
    assert valid[:12].all() and not valid[12:].any()
    xy = grid.cell_centres_xy(torch.tensor([[0, 0], [2, 5], [11, 15]]))
    # centre = (c + 0.5) * 14 / 0.5; row 11's centre (322) lies past the image -> clipped to 319
    assert xy.tolist() == [[14.0, 14.0], [154.0, 70.0], [434.0, 319.0]]


def test_upsample_never_reads_padded_cells():
    grid = LetterboxGrid.for_patches(TGT_HW, GRID, PATCH)
    m = torch.zeros(GRID, GRID)
    m[~grid.valid_mask()] = 100.0
    m[:, 8:][grid.valid_mask()[:, 8:]] = 1.0
    up = grid.upsample_to_image(m, grid.valid_mask())
    assert up.shape == TGT_HW
    assert float(up.max()) <= 1.0 + 1e-6
    assert float(up[:, :100].max()) == 0.0 and float(up[:, 130:].min()) == pytest.approx(1.0)


# ---------------------------------------------------------------- patch mask


def test_patch_mask_letterbox_alignment():
    grid = LetterboxGrid.for_patches((320, 448), GRID, PATCH)  # scale 0.5: one cell = 28 px
    mask = np.zeros((320, 448), dtype=bool)
    mask[56:112, 84:196] = True  # exactly rows 2..3, cols 3..6
    pm = patch_mask(mask, grid)
    expected = torch.zeros(GRID, GRID, dtype=torch.bool)
    expected[2:4, 3:7] = True
    assert torch.equal(pm, expected)
    # plain bilinear (no antialias) gives the same answer on cell-aligned masks
    assert torch.equal(patch_mask(mask, grid, antialias=False), expected)


def test_patch_mask_half_covered_cells_and_padding():
    grid = LetterboxGrid.for_patches(TGT_HW, GRID, PATCH)
    mask = np.zeros(TGT_HW, dtype=bool)
    mask[:, 0:21] = True  # column 0 fully, column 1 half covered (7 of 14 px)
    mask[150:, :] = True  # bottom strip: row 10 gets 4 of 14 px, row 11 all 6 image px
    pm = patch_mask(mask, grid)
    assert pm[:12, 0].all() and not pm[:10, 1].any()  # half-covered column 1: not on
    assert pm[11].all()  # edge row judged on its image part (6 px, all masked)
    assert not pm[:11, 2:].any()
    assert not pm[12:].any()  # padded rows never on


def test_patch_mask_errors():
    grid = LetterboxGrid.for_patches(TGT_HW, GRID, PATCH)
    with pytest.raises(InvalidInput, match="does not match"):
        patch_mask(np.ones((100, 100), dtype=bool), grid)
    with pytest.raises(InvalidInput, match="empty / too small"):
        patch_mask(np.zeros(TGT_HW, dtype=bool), grid)
    tiny = np.zeros(TGT_HW, dtype=bool)
    tiny[50:53, 50:53] = True
    with pytest.raises(InvalidInput, match="empty / too small"):
        patch_mask(tiny, grid)
    with pytest.raises(InvalidInput):
        patch_mask(np.ones((2, 3, 4)), grid)


def test_patch_mask_keeps_thin_structures():
    """A 2 px diagonal crack covers no cell by half: the cells along it are taken rather
    than the reference refused; a thicker object keeps the plain > 0.5 rule."""
    grid = LetterboxGrid.for_patches(TGT_HW, GRID, PATCH)
    crack = np.zeros(TGT_HW, dtype=bool)
    for x in range(20, 140):
        crack[x // 2 + 20 : x // 2 + 22, x] = True  # slope 1/2, 2 px thick
    pm = patch_mask(crack, grid)
    cols = pm.nonzero()[:, 1].unique()
    assert len(cols) >= 7  # cells along the whole crack (x 20..139 = cells 1..9)
    rows_of = {int(c): pm[:, c].nonzero()[:, 0].tolist() for c in cols}
    for c, rows in rows_of.items():  # only cells the crack passes through
        ys = [x // 2 + 20 for x in range(c * PATCH, (c + 1) * PATCH) if 20 <= x < 140]
        assert all(min(ys) // PATCH - 1 <= r <= (max(ys) + 1) // PATCH for r in rows), (c, rows)
    blob = np.zeros(TGT_HW, dtype=bool)
    blob[28:56, 28:70] = True  # rows 2..3, cols 2..4 exactly
    blob[60:62, 100:140] = True  # plus a thin line: ignored once a cell is half covered
    assert pm.sum() > 0 and patch_mask(blob, grid).sum() == 6


# ---------------------------------------------------------------- soft matching


def test_soft_match_excludes_padding(feats):
    _, _, pm, rf = _reference(feats, "obj")
    _grid, tf, valid = _target(feats)
    maps = soft_match(masked_features(rf, pm), tf, valid)
    assert maps.scores.shape == (GRID, GRID) and maps.similarity.shape == (GRID, GRID)
    assert float(maps.scores[~valid].abs().max()) == 0.0
    # Every reference patch's distribution lives on valid cells only: marginals sum to 1.
    assert float(maps.scores[valid].sum()) == pytest.approx(1.0, abs=1e-5)
    obj = _cells_box(*OBJ)
    assert float(maps.scores[obj].sum()) > 0.99
    assert float(maps.similarity[obj].min()) > 0.9
    dis_sim = maps.similarity[_cells_box(*DIS)].mean()
    bg_sim = maps.similarity[valid & ~obj & ~_cells_box(*DIS)].mean()
    assert 0.2 < float(dis_sim) < 0.4 and abs(float(bg_sim)) < 0.1


def test_soft_match_geometric_mean_and_prototype_similarity_against_a_reference(feats):
    """#12: the geometric-mean variant and the normalised-prototype similarity, checked
    against a direct computation."""
    from vplab.matching import VisualPromptConfig

    _, _, pm, rf = _reference(feats, "obj")
    _grid, tf, valid = _target(feats)
    ref = masked_features(rf, pm)
    maps = soft_match(ref, tf, valid, score_mean="geometric", similarity="prototype")
    tgt = tf[valid]
    logp = torch.log_softmax(ref @ tgt.T / 0.1, dim=1)
    assert torch.allclose(maps.scores[valid], logp.mean(0).exp(), atol=1e-7)
    proto = ref.mean(0) / ref.mean(0).norm()
    assert torch.allclose(maps.similarity[valid], tgt @ proto, atol=1e-6)
    mean_sim = soft_match(ref, tf, valid).similarity
    # the plain mean is the prototype cosine shrunk by the mean's norm (< 1)
    assert torch.allclose(mean_sim[valid], maps.similarity[valid] * ref.mean(0).norm(), atol=1e-6)
    obj = _cells_box(*OBJ)
    assert float(maps.scores[obj].mean()) > 10 * float(maps.scores[valid & ~obj].mean())
    with pytest.raises(InvalidInput):
        soft_match(ref, tf, valid, score_mean="median")
    with pytest.raises(InvalidInput):
        VisualPromptConfig(similarity="max")


@pytest.mark.parametrize("combine", ["sum", "product"])
def test_soft_match_bidirectional(feats, combine):
    _, _, pm, rf = _reference(feats, "obj")
    grid, tf, valid = _target(feats)
    ref_all = torch.cat([rf[pm], rf[~pm]])  # masked patches first
    maps = soft_match(
        rf[pm], tf, valid, bidirectional=True, ref_all_feats=ref_all, bidirectional_combine=combine
    )
    assert float(maps.scores[~valid].abs().max()) == 0.0
    pts = select_points(maps.scores, maps.similarity, valid, grid)
    assert pts.positive.shape[0] > 0 and _in_box_px(pts.positive[:1], OBJ).all()
    if combine == "product":  # the default: the distractor is suppressed entirely
        _check_points(pts, grid, valid, [OBJ])


def test_soft_match_input_errors(feats):
    _, _, pm, rf = _reference(feats, "obj")
    _, tf, valid = _target(feats)
    with pytest.raises(InvalidInput):
        soft_match(rf[pm][:, :5], tf, valid)
    with pytest.raises(InvalidInput):
        soft_match(rf[pm], tf, torch.zeros_like(valid))
    with pytest.raises(InvalidInput):
        soft_match(rf[pm][:0], tf, valid)


# ---------------------------------------------------------------- points


def _check_points(pts, grid, valid, obj_boxes):
    inside = torch.zeros(pts.positive.shape[0], dtype=torch.bool)
    for box in obj_boxes:
        inside |= _in_box_px(pts.positive, box)
    assert pts.positive.shape[0] > 0
    assert inside.all(), pts.positive
    assert not _in_box_px(pts.positive, DIS).any()
    # never in padded cells, and inside the image
    assert valid[pts.grid_cells[:, 0], pts.grid_cells[:, 1]].all()
    h, w = grid.image_hw
    for p in (pts.positive, pts.negative):
        assert (p[:, 0] >= 0).all() and (p[:, 0] <= w - 1).all()
        assert (p[:, 1] >= 0).all() and (p[:, 1] <= h - 1).all()
    # negatives: 2, in the background (not object, not distractor, not padded), label 0
    assert pts.negative.shape == (2, 2)
    assert valid[pts.negative_cells[:, 0], pts.negative_cells[:, 1]].all()
    for box in list(obj_boxes) + [DIS]:
        assert not _in_box_px(pts.negative, box).any()
    assert pts.negative_labels.tolist() == [0, 0]
    coords, labels = pts.sam_prompts()
    n = pts.positive.shape[0]
    assert coords.shape == (n, 3, 2) and labels.shape == (n, 3)
    assert labels[:, 0].eq(1).all() and labels[:, 1:].eq(0).all()
    assert torch.equal(coords[:, 0], pts.positive) and torch.equal(coords[0, 1:], pts.negative)


def test_points_soft_land_in_object(feats):
    _, _, pm, rf = _reference(feats, "obj")
    grid, tf, valid = _target(feats)
    maps = soft_match(rf[pm], tf, valid)
    pts = select_points(maps.scores, maps.similarity, valid, grid)
    _check_points(pts, grid, valid, [OBJ])
    assert (pts.positive_scores >= 0.4).all()
    assert torch.all(pts.positive_scores[:-1] >= pts.positive_scores[1:])  # best first


def test_points_pixel_mapping_with_scale(feats):
    """Target twice as large as the frame (scale 0.5): points scale back to pixels."""
    _, _, pm, rf = _reference(feats, "obj")
    _, tf, valid = _target(feats)
    grid2 = LetterboxGrid.for_patches((320, 448), GRID, PATCH)
    assert torch.equal(grid2.valid_mask(), valid)
    maps = soft_match(rf[pm], tf, valid)
    pts = select_points(maps.scores, maps.similarity, valid, grid2)
    assert pts.positive.shape[0] > 0
    assert _in_box_px(pts.positive, OBJ, cell_px=28.0).all()


def test_two_reference_shots(feats):
    """K=2: shot 1 shows object A, shot 2 object B; the target has both."""
    _, _, pm1, rf1 = _reference(feats, "obj")
    # Same scale and object size as shot 1: the marginal probability mass of each shot is
    # spread over its object's cells, so unbalanced shots would favour the smaller object.
    _, _, pm2, rf2 = _reference(feats, "obj2", hw=(200, 300), box_px=(40, 140, 150, 250), seed=11)
    assert abs(int(pm1.sum()) - int(pm2.sum())) <= 6
    grid, tf, valid = _target(feats, with_obj2=True)
    ref = torch.cat([rf1[pm1], rf2[pm2]])  # (m1 + m2, C)
    maps = soft_match(ref, tf, valid)
    pts = select_points(maps.scores, maps.similarity, valid, grid)
    _check_points(pts, grid, valid, [OBJ, OBJ2])
    assert _in_box_px(pts.positive, OBJ).any() and _in_box_px(pts.positive, OBJ2).any()
    # with shot 1 alone, object B is not found
    one = soft_match(rf1[pm1], tf, valid)
    pts1 = select_points(one.scores, one.similarity, valid, grid)
    assert _in_box_px(pts1.positive, OBJ).all()


def test_prototype_baseline_same_answer(feats):
    _, _, pm, rf = _reference(feats, "obj")
    grid, tf, valid = _target(feats)
    maps = prototype_match(rf[pm], tf, valid)
    assert float(maps.scores[~valid].abs().max()) == 0.0
    assert float(maps.scores[_cells_box(*OBJ)].min()) > 0.9
    pts = select_points(maps.scores, maps.similarity, valid, grid, threshold=0.65, normalise=False)
    _check_points(pts, grid, valid, [OBJ])
    # nothing clears the absolute threshold when the object is absent
    grid_b, tf_b, valid_b = _target(feats)
    tf_b[_cells_box(*OBJ)] = feats["bg"]
    none = prototype_match(rf[pm], tf_b, valid_b)
    pts_none = select_points(
        none.scores, none.similarity, valid_b, grid_b, threshold=0.65, normalise=False
    )
    assert pts_none.positive.shape == (0, 2) and pts_none.negative.shape == (2, 2)


def test_probabilistic_points_seeded(feats):
    _, _, pm, rf = _reference(feats, "obj")
    grid, tf, valid = _target(feats)
    maps = soft_match(rf[pm], tf, valid, temperature=1.0)  # flatter, so many candidates

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return select_points(
            maps.scores,
            maps.similarity,
            valid,
            grid,
            mode="probabilistic",
            num_samples=6,
            generator=g,
        )

    a, b = run(0), run(0)
    assert torch.equal(a.positive, b.positive) and torch.equal(a.negative, b.negative)
    assert a.positive.shape == (6, 2)
    _check_points(a, grid, valid, [OBJ])
    others = [run(s).grid_cells for s in range(1, 6)]
    assert any(not torch.equal(o, a.grid_cells) for o in others)


def test_point_cap_and_spread():
    """Many local maxima: at most 40 points and at most one per bin of the 8x8 grid."""
    g = torch.Generator().manual_seed(3)
    grid = LetterboxGrid.for_patches((896, 896), 64, 14)
    valid = grid.valid_mask()
    scores = torch.rand(64, 64, generator=g)
    pts = select_points(scores, -scores, valid, grid, threshold=0.0)
    assert pts.positive.shape[0] == 40
    bins = (pts.grid_cells // 8).tolist()
    assert len({tuple(b) for b in bins}) == 40
    # the kept ones are the best of the per-bin winners
    assert float(pts.positive_scores.min()) > 0.9


def test_select_points_shape_errors():
    grid = LetterboxGrid.for_patches(TGT_HW, GRID, PATCH)
    with pytest.raises(InvalidInput):
        select_points(
            torch.zeros(8, 8), torch.zeros(8, 8), torch.ones(8, 8, dtype=torch.bool), grid
        )
    with pytest.raises(InvalidInput):
        select_points(
            torch.zeros(16, 16), torch.zeros(16, 16), torch.zeros(16, 16, dtype=torch.bool), grid
        )


# ---------------------------------------------------------------- scoring and NMS


def test_mask_scores_and_nms_iom():
    from vplab.matching import mask_scores, nms_iom

    masks = torch.zeros(4, 10, 10, dtype=torch.bool)
    masks[0, :5, :5] = True  # whole object
    masks[1, 1:3, 1:3] = True  # part of it: IoU 0.16 but IoM 1 -> duplicate
    masks[2, 6:, 6:] = True  # elsewhere
    # masks[3] empty
    sim = torch.zeros(10, 10)
    sim[:5, :5] = 0.8
    sim[6:, 6:] = 0.5
    iou = torch.tensor([0.9, 1.0, 0.5, 1.0])
    scores = mask_scores(masks, iou, sim)
    assert scores.tolist() == pytest.approx([0.72, 0.8, 0.25, 0.0])
    assert nms_iom(masks, scores, 0.5).tolist() == [
        1,
        2,
    ]  # part wins on score, whole is its duplicate
    assert nms_iom(masks, torch.tensor([0.9, 0.1, 0.5, 1.0]), 0.5).tolist() == [0, 2]
    assert nms_iom(masks[:0], scores[:0]).numel() == 0


def test_config_from_dict():
    from vplab.matching import VisualPromptConfig

    cfg = VisualPromptConfig.from_dict({"matcher": "prototype", "refine": True})
    # The mask threshold defaults to the SAM weights' calibrated one (None here).
    assert cfg.matcher == "prototype" and cfg.refine and cfg.mask_score_threshold is None
    assert VisualPromptConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InvalidInput, match="unknown"):
        VisualPromptConfig.from_dict({"temprature": 0.1})
    with pytest.raises(InvalidInput):
        VisualPromptConfig(matcher="hard")


# ---------------------------------------------------------------- pipeline (tiny models)
#
# Random weights: the masks mean nothing, so these tests check the mechanics. The score
# threshold is lowered to -1 where survivors are needed (random SAM predicts IoU ~ 0).


class SpySegmenter:
    """The real PromptSegmenter, recording every decode call."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[dict] = []

    @property
    def output(self):
        return self.inner.output

    def embed(self, image):
        return self.inner.embed(image)

    def embed_images(self, images):
        return self.inner.embed_images(images)

    def decode(self, embedding, point_coords=None, point_labels=None, **kw):
        self.calls.append(
            {"coords": np.array(point_coords), "labels": np.array(point_labels), **kw}
        )
        return self.inner.decode(embedding, point_coords, point_labels, **kw)


@pytest.fixture(scope="module")
def models():
    from vplab.models import build_dinov2, build_sam
    from vplab.segmentation import PromptSegmenter

    return PromptSegmenter(build_sam("sam_tiny")), build_dinov2("dinov2_tiny")


def _images():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    labels = np.zeros((120, 160), dtype=np.int64)
    labels[20:60, 30:80] = 1
    labels[70:110, 90:150] = 2
    ref2 = rng.integers(0, 255, (90, 90, 3), dtype=np.uint8)
    labels2 = np.zeros((90, 90), dtype=np.int64)
    labels2[10:50, 10:50] = 2  # second shot shows class 2 only
    tgt = rng.integers(0, 255, (100, 180, 3), dtype=np.uint8)
    return (ref, labels), (ref2, labels2), tgt


def _prompter(models, **cfg):
    from vplab.matching import VisualPromptConfig, VisualPrompter

    seg, dino = models
    spy = SpySegmenter(seg)
    config = VisualPromptConfig(dino_size=224, mask_score_threshold=-1.0, **cfg)
    return VisualPrompter(spy, dino, config), spy


def _check_prediction(res, spy_calls, tgt_hw, vp):
    h, w = tgt_hw
    assert res.label_map.shape == (h, w) and res.label_map.dtype == torch.long
    covered = torch.zeros(h, w, dtype=torch.bool)
    for cid, p in res.classes.items():
        n = p.points.positive.shape[0]
        assert p.mask.shape == (h, w) and p.mask.dtype == torch.bool
        assert p.prompt_masks.shape == (n, h, w) and p.prompt_scores.shape == (n,)
        assert p.point_coords.shape == (n, 1 + vp.config.num_negatives, 2)
        # positives first with label 1, negatives label 0, never -1
        assert p.point_labels[:, 0].eq(1).all() and p.point_labels[:, 1:].eq(0).all()
        for xy in (p.points.positive, p.points.negative):
            assert (xy[:, 0] >= 0).all() and (xy[:, 0] <= w - 1).all()
            assert (xy[:, 1] >= 0).all() and (xy[:, 1] <= h - 1).all()
        # union is exactly the OR of the surviving prompts' masks; survivors pass threshold
        assert p.kept.numel() >= 1
        assert torch.equal(p.mask, p.prompt_masks[p.kept].any(dim=0))
        assert (p.scores >= vp.config.mask_score_threshold).all()
        assert torch.all(p.scores[:-1] >= p.scores[1:])
        # the label map only assigns pixels inside the class's union
        assert (p.mask | (res.label_map != cid)).all()
        covered |= p.mask
    assert torch.equal(covered, res.label_map != 0)
    assert set(res.label_map.unique().tolist()) <= {0, *res.classes}


def test_pipeline_multiclass_mechanics(models):
    (ref, labels), (ref2, labels2), tgt = _images()
    vp, spy = _prompter(models)
    assert vp.set_references([(ref, labels), (ref2, labels2)]) == [1, 2]
    assert [r.shots for r in vp.references] == [[0], [0, 1]]  # K=2 for class 2
    # DINOv2 at 224: 16x16 grid; target 100x180 -> scale 224/180, 9 valid rows (87/14)
    res = vp.predict(tgt)
    assert set(res.classes) == {1, 2}
    _check_prediction(res, spy.calls, tgt.shape[:2], vp)
    # one decoder call per class, carrying every prompt of that class, multimask
    assert len(spy.calls) == 2
    for call, p in zip(spy.calls, res.classes.values()):
        assert call["multimask_output"] is None  # the served output: the base model's 3 masks
        assert np.array_equal(call["coords"], p.point_coords.numpy())
        assert np.array_equal(call["labels"], p.point_labels.numpy())
    # points never on padded cells of the target grid
    from vplab.models import extract_patch_features

    pf = extract_patch_features(vp.dino, tgt, 224)
    for p in res.classes.values():
        cells = torch.cat([p.points.grid_cells, p.points.negative_cells])
        assert pf.valid[cells[:, 0], cells[:, 1]].all()


def test_pipeline_default_threshold_can_drop_everything(models):
    (ref, labels), _, tgt = _images()
    vp, _ = _prompter(models)
    vp.config.mask_score_threshold = 0.42  # random SAM predicts IoU ~ 0: nothing survives
    vp.set_references([(ref, labels == 1)])
    res = vp.predict(tgt)
    p = res.classes[1]
    assert p.kept.numel() == 0 and not p.mask.any() and not res.label_map.any()
    assert p.prompt_masks.shape[0] == p.points.positive.shape[0] > 0


def test_pipeline_cached_inputs_and_determinism(models):
    from vplab.models import extract_patch_features

    (ref, labels), _, tgt = _images()
    vp, spy = _prompter(models, point_mode="probabilistic", num_samples=5, seed=3)
    vp.set_references([(ref, labels)])
    a = vp.predict(tgt)
    emb = spy.embed(tgt)
    pf = extract_patch_features(vp.dino, tgt, 224)
    b = vp.predict(None, target_embedding=emb, target_features=pf)
    assert torch.equal(a.label_map, b.label_map)
    for c in a.classes:
        assert torch.equal(a.classes[c].point_coords, b.classes[c].point_coords)
        assert torch.equal(a.classes[c].mask, b.classes[c].mask)
    # another seed samples other points
    c = vp.predict(None, target_embedding=emb, target_features=pf, seed=4)
    assert any(
        not torch.equal(a.classes[k].points.grid_cells, c.classes[k].points.grid_cells)
        for k in a.classes
    )
    # mismatched cached inputs are refused
    other = extract_patch_features(vp.dino, tgt[:, :100], 224)
    with pytest.raises(InvalidInput, match="same image"):
        vp.predict(None, target_embedding=emb, target_features=other)


def test_pipeline_refine_and_prototype(models):
    (ref, labels), _, tgt = _images()
    vp, spy = _prompter(models, refine=True)
    vp.set_references([(ref, labels == 2)])
    res = vp.predict(tgt)
    assert [c.get("multimask_output") for c in spy.calls] == [None, False]
    refine_call = spy.calls[1]
    n = res.classes[1].points.positive.shape[0]
    assert refine_call["boxes"].shape[1] == 4 and refine_call["mask_input"].shape[1:] == (1, 64, 64)
    assert refine_call["coords"].shape[0] == refine_call["boxes"].shape[0] <= n
    _check_prediction(res, spy.calls, tgt.shape[:2], vp)

    vp2, _ = _prompter(models, matcher="prototype", prototype_threshold=-1.0)
    vp2.set_references([(ref, labels == 2)])
    _check_prediction(vp2.predict(tgt), [], tgt.shape[:2], vp2)


def test_pipeline_reference_errors(models):
    (ref, labels), _, tgt = _images()
    vp, _ = _prompter(models)
    with pytest.raises(InvalidInput, match="set_references"):
        vp.predict(tgt)
    with pytest.raises(InvalidInput, match="empty / too small"):
        vp.set_references([(ref, np.zeros(labels.shape, dtype=bool))])
    with pytest.raises(InvalidInput, match="does not match"):
        vp.set_references([(ref, labels[:50])])
    with pytest.raises(InvalidInput, match="single class"):
        vp.set_references([(ref, labels > 0)], classes=[1, 2])
    with pytest.raises(InvalidInput, match="class 7"):
        vp.set_references([(ref, labels)], classes=[1, 7])
    with pytest.raises(InvalidInput, match="background"):
        vp.set_references([(ref, labels)], classes=[0])


def test_pipeline_with_constructed_features(models, feats):
    """Known feature maps through the real tiny SAM decoding: the prompts SAM receives
    sit on the object (pixel coordinates), the negatives on background, in one call."""
    from vplab.models import PatchFeatures

    seg, _ = models
    rgrid, rmask, _, rf = _reference(feats, "obj")
    tgrid, tf, valid = _target(feats)
    ref_pf = PatchFeatures(rf, rgrid.valid_mask(), rgrid.image_hw, rgrid.resized_hw, 224, 14)
    tgt_pf = PatchFeatures(tf, valid, tgrid.image_hw, tgrid.resized_hw, 224, 14)
    img = np.random.default_rng(5).integers(0, 255, (*TGT_HW, 3), dtype=np.uint8)
    vp, spy = _prompter(models)
    vp.dino = None  # features are given: no DINOv2 needed
    vp.set_references([(None, rmask)], features=[ref_pf])
    res = vp.predict(img, target_features=tgt_pf)
    p = res.classes[1]
    _check_points(p.points, tgrid, valid, [OBJ])
    (call,) = spy.calls
    assert _in_box_px(torch.as_tensor(call["coords"][:, 0]), OBJ).all()
    assert call["labels"][:, 1:].max() == 0
    _check_prediction(res, spy.calls, TGT_HW, vp)
    # each survivor is the decoder's best-IoU mask for its own prompt (decoded alone)
    emb = seg.embed(img)
    for k in p.kept.tolist():
        alone = seg.decode(
            emb, p.point_coords[k : k + 1].numpy(), p.point_labels[k : k + 1].numpy()
        )
        best = alone.masks[0, alone.iou_predictions[0].argmax()]
        assert (best == p.prompt_masks[k]).float().mean() > 0.99


def test_a_tuned_segmenter_is_decoded_through_its_trained_output(models):
    """#12: visual prompting never picks among outputs a tuned model was not trained on."""
    from vplab.matching.decoding import decode_class
    from vplab.segmentation import PromptSegmenter

    base, _ = models
    _, _, tgt = _images()
    emb = base.embed(tgt)
    single = PromptSegmenter(base.sam, output="token0")
    points = _points_for(tgt)
    sim = torch.ones(tgt.shape[:2])
    pred = decode_class(single, emb, points, sim, 1)
    coords, labels = points.sam_prompts()
    token0 = base.decode(emb, coords.numpy(), labels.numpy(), multimask_output=False)
    assert torch.equal(pred.prompt_masks, token0.masks[:, 0])
    assert torch.allclose(pred.prompt_iou, token0.iou_predictions[:, 0])
    assert (
        single.decode(emb, coords.numpy(), labels.numpy(), multimask_output=None).masks.shape[1]
        == 1
    )
    assert (
        base.decode(emb, coords.numpy(), labels.numpy(), multimask_output=None).masks.shape[1] == 3
    )
    first = PromptSegmenter(base.sam, output="token1").decode(
        emb, coords.numpy(), labels.numpy(), multimask_output=None
    )
    three = base.decode(emb, coords.numpy(), labels.numpy(), multimask_output=True)
    assert torch.equal(first.low_res_logits[:, 0], three.low_res_logits[:, 0])
    with pytest.raises(InvalidInput):
        PromptSegmenter(base.sam, output="token7")


def _points_for(image):
    from vplab.matching.points import PointPrompts

    h, w = image.shape[:2]
    pos = torch.tensor([[w * 0.3, h * 0.4], [w * 0.7, h * 0.6]])
    neg = torch.tensor([[1.0, 1.0], [w - 2.0, h - 2.0]])
    return PointPrompts(pos, neg, torch.ones(2), torch.zeros(2, 2).long(), torch.zeros(2, 2).long())
