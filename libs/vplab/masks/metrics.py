"""Overlap metrics for binary masks and label maps.

Convention: when prediction and ground truth are both empty the score is 1.0 (a
correct "nothing here"), so empty images do not drag means down or produce NaN.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from vplab.errors import InvalidInput


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred), np.asarray(gt)
    if p.shape != g.shape:
        raise InvalidInput(f"prediction shape {p.shape} does not match ground truth {g.shape}")
    return p, g


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two binary masks (nonzero = foreground)."""
    p, g = _pair(pred, gt)
    p, g = p != 0, g != 0
    union = int(np.count_nonzero(p | g))
    return 1.0 if union == 0 else int(np.count_nonzero(p & g)) / union


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice / F1 of two binary masks: 2|P∩G| / (|P| + |G|)."""
    p, g = _pair(pred, gt)
    p, g = p != 0, g != 0
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
    return 1.0 if total == 0 else 2 * int(np.count_nonzero(p & g)) / total


def mean_iou(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean of per-image binary IoU over (pred, gt) pairs."""
    scores = [iou(p, g) for p, g in pairs]
    if not scores:
        raise InvalidInput("mean_iou needs at least one (prediction, ground truth) pair")
    return float(np.mean(scores))


def class_overlaps(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    classes: Sequence[int] | None = None,
    ignore_index: int | None = None,
) -> dict[int, tuple[int, int]]:
    """Per class: (intersection, union) pixel counts of label maps, summed over all pairs.

    ``classes`` defaults to every id seen in any prediction or ground truth; a requested
    class absent everywhere is (0, 0). Pixels whose ground truth is ``ignore_index`` are
    skipped.
    """
    inter: dict[int, int] = {}
    union: dict[int, int] = {}
    n = 0
    for pred, gt in pairs:
        p, g = _pair(pred, gt)
        for a, what in ((p, "prediction"), (g, "ground truth")):
            if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
                raise InvalidInput(f"label map {what} must be integer, got dtype {a.dtype}")
        p, g = p.astype(np.int64).ravel(), g.astype(np.int64).ravel()
        if ignore_index is not None:
            keep = g != ignore_index
            p, g = p[keep], g[keep]
        if (p.size and p.min() < 0) or (g.size and g.min() < 0):
            raise InvalidInput("label ids must be non-negative")
        # Confusion matrix over the ids present (remapped to 0..k-1: uint16 ids would
        # make a dense 65536^2 matrix).
        ids, inv = np.unique(np.concatenate([p, g]), return_inverse=True)
        k = len(ids)
        pi, gi = inv[: p.size], inv[p.size :]
        cm = np.bincount(gi * k + pi, minlength=k * k).reshape(k, k)
        tp = np.diag(cm)
        un = cm.sum(0) + cm.sum(1) - tp
        for i, c in enumerate(ids.tolist()):
            inter[c] = inter.get(c, 0) + int(tp[i])
            union[c] = union.get(c, 0) + int(un[i])
        n += 1
    if n == 0:
        raise InvalidInput("class metrics need at least one (prediction, ground truth) pair")
    if ignore_index is not None:
        union.pop(ignore_index, None)
    wanted = sorted(union) if classes is None else [int(c) for c in classes]
    return {c: (inter.get(c, 0), union.get(c, 0)) for c in wanted}


def per_class_iou(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    classes: Sequence[int] | None = None,
    ignore_index: int | None = None,
) -> dict[int, float]:
    """Per-class IoU of label maps, accumulated over all pairs (dataset-level, as in
    semantic-segmentation benchmarks: sum of intersections / sum of unions per class).
    A class absent from every prediction and ground truth scores 1.0."""
    overlaps = class_overlaps(pairs, classes, ignore_index)
    return {c: (i / u if u else 1.0) for c, (i, u) in overlaps.items()}


def mean_class_iou(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    classes: Sequence[int] | None = None,
    ignore_index: int | None = None,
) -> float:
    """mIoU of label maps: the mean of ``per_class_iou`` over classes."""
    scores = per_class_iou(pairs, classes, ignore_index)
    if not scores:
        raise InvalidInput("no classes to average")
    return float(np.mean(list(scores.values())))
