"""vplab.evaluation: the per-class / per-image report, checked against hand counts."""

import numpy as np
import pytest

from vplab.errors import InvalidInput
from vplab.evaluation import evaluate, evaluate_folders
from vplab.masks import encode_binary_mask, encode_label_map


def test_evaluate_against_hand_counts():
    gt = np.zeros((4, 4), np.int32)
    gt[:2, :2] = 1  # 4 px of class 1
    gt[2:, 2:] = 2  # 4 px of class 2
    pred = gt.copy()
    pred[0, 0] = 0  # class 1: I 3, U 4
    pred[3, 0] = 2  # class 2: I 4, U 5
    report = evaluate([("a", pred, gt), ("b", gt, gt)], classes=[1, 2])
    # Dataset level: class 1 I = 3 + 4, U = 4 + 4; class 2 I = 4 + 4, U = 5 + 4.
    assert report.per_class[1].iou == pytest.approx(7 / 8)
    assert report.per_class[2].iou == pytest.approx(8 / 9)
    assert report.per_class[1].dice == pytest.approx(2 * 7 / (7 + 8))
    assert report.miou == pytest.approx((7 / 8 + 8 / 9) / 2)
    assert [(r.image_id, round(r.iou, 4)) for r in report.per_image] == [
        ("a", round((3 / 4 + 4 / 5) / 2, 4)),
        ("b", 1.0),
    ]
    assert report.n_images == 2
    assert report.to_json()["per_class"]["1"]["iou"] == pytest.approx(7 / 8)


def test_evaluate_empty_and_absent_classes():
    empty = np.zeros((3, 3), np.int32)
    report = evaluate([("x", empty, empty)], classes=[1])
    assert report.miou == 1.0 and report.per_image[0].iou == 1.0  # nothing, correctly
    with pytest.raises(InvalidInput):
        evaluate([])


def test_evaluate_folders_binary_and_label_maps(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    a = np.zeros((4, 4), bool)
    a[:2] = True
    (gt / "a.png").write_bytes(encode_binary_mask(a))  # 0/255
    (pred / "a.png").write_bytes(encode_label_map(a.astype(np.uint8)))  # 0/1: also class 1
    assert evaluate_folders(pred, gt).miou == 1.0
    # Label maps keep their ids, even where an image shows a single class (3 is not 1).
    m = np.zeros((4, 4), np.uint8)
    m[:2] = 3
    m[3, 3] = 1
    (gt / "a.png").write_bytes(encode_label_map(m))
    (pred / "a.png").write_bytes(encode_label_map(np.where(m == 3, 3, 0).astype(np.uint8)))
    report = evaluate_folders(pred, gt, classes=3)
    assert set(report.per_class) == {1, 2, 3}
    assert report.per_class[3].iou == 1.0 and report.per_class[1].iou == 0.0
    (gt / "b.png").write_bytes(encode_label_map(m))
    with pytest.raises(InvalidInput, match="have no prediction: b"):
        evaluate_folders(pred, gt)
