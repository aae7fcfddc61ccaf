"""Evaluation of predicted label maps against ground truth: the one report that the
``vplab evaluate`` command prints and the service's evaluations will store (#14).

Metrics (``vplab.masks.metrics``): per class, IoU and Dice accumulated over all images
(dataset-level, as in semantic-segmentation benchmarks); ``miou`` / ``mean_dice`` are their
means over the foreground classes 1..K (background, 0, is not a class); per image, the mean
IoU / Dice over the classes present in its ground truth or prediction (1.0 when neither has
any: a correct "nothing here").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vplab.errors import InvalidInput
from vplab.masks import class_overlaps, read_label_png

IMAGE_SUFFIXES = (".png",)


@dataclass(frozen=True)
class ClassScore:
    iou: float
    dice: float


@dataclass(frozen=True)
class ImageScore:
    image_id: str
    iou: float
    dice: float


@dataclass(frozen=True)
class Evaluation:
    miou: float
    mean_dice: float
    n_images: int
    per_class: dict[int, ClassScore] = field(default_factory=dict)
    per_image: list[ImageScore] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["per_class"] = {str(k): v for k, v in out["per_class"].items()}
        return out


def _score(inter: int, union: int) -> ClassScore:
    """IoU and Dice from pixel counts (|P| + |G| = intersection + union); 1.0 when empty."""
    return ClassScore(inter / union, 2 * inter / (inter + union)) if union else ClassScore(1.0, 1.0)


def evaluate(
    items: Iterable[tuple[str, np.ndarray, np.ndarray]], classes: Sequence[int] | None = None
) -> Evaluation:
    """``items``: (image id, predicted label map, ground-truth label map), (H, W) ints with
    0 = background. ``classes``: the foreground class ids (default: every nonzero id seen)."""
    per_image_overlaps = [(image_id, class_overlaps([(p, g)])) for image_id, p, g in items]
    if not per_image_overlaps:
        raise InvalidInput("nothing to evaluate: no (prediction, ground truth) pairs")
    totals: dict[int, tuple[int, int]] = {}
    for _, overlaps in per_image_overlaps:
        for c, (i, u) in overlaps.items():
            ti, tu = totals.get(c, (0, 0))
            totals[c] = (ti + i, tu + u)
    wanted = [int(c) for c in classes] if classes is not None else sorted(set(totals) - {0})
    wanted = wanted or [1]
    per_image = []
    for image_id, overlaps in per_image_overlaps:
        present = [_score(*overlaps[c]) for c in wanted if overlaps.get(c, (0, 0))[1]]
        per_image.append(
            ImageScore(
                image_id,
                float(np.mean([s.iou for s in present])) if present else 1.0,
                float(np.mean([s.dice for s in present])) if present else 1.0,
            )
        )
    per_class = {c: _score(*totals.get(c, (0, 0))) for c in wanted}
    return Evaluation(
        miou=float(np.mean([s.iou for s in per_class.values()])),
        mean_dice=float(np.mean([s.dice for s in per_class.values()])),
        n_images=len(per_image),
        per_class=per_class,
        per_image=per_image,
    )


def evaluate_folders(
    pred_dir: str | Path, gt_dir: str | Path, classes: int | None = None
) -> Evaluation:
    """Evaluate the PNGs of ``pred_dir`` against the same-named PNGs of ``gt_dir``.

    A folder of binary masks saved 0/255 (as ``vplab visual-prompt`` writes them) counts
    as class 1 (0/1 masks are class 1 anyway); label maps keep their ids. ``classes``: K, the classes
    1..K to score (default: every id seen). Every ground truth needs a prediction.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not d.is_dir():
            raise InvalidInput(f"{what} directory {str(d)!r} does not exist")
    gts = {p.stem: p for p in sorted(gt_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not gts:
        raise InvalidInput(f"no PNG ground truths in {str(gt_dir)!r}")
    preds = {p.stem: p for p in pred_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    missing = sorted(set(gts) - set(preds))
    if missing:
        shown = ", ".join(missing[:5]) + ("..." if len(missing) > 5 else "")
        raise InvalidInput(f"{len(missing)} ground truths have no prediction: {shown}")
    items = []
    for stem, gt_path in gts.items():
        gt = read_label_png(gt_path, what=f"ground truth {stem}")
        pred = read_label_png(preds[stem], what=f"prediction {stem}")
        if gt.shape != pred.shape:
            raise InvalidInput(
                f"{stem}: prediction is {pred.shape[1]}x{pred.shape[0]}, ground truth "
                f"{gt.shape[1]}x{gt.shape[0]}"
            )
        items.append((stem, pred, gt))
    # Binary masks saved 0/255 (what `vplab visual-prompt` and most tools write) are class 1.
    # Decided per folder, not per file: a label map whose image shows one class keeps its id.
    preds_binary, gts_binary = (
        {v for arrays in side for v in np.unique(arrays).tolist()} - {0} == {255}
        for side in ([p for _, p, _ in items], [g for _, _, g in items])
    )
    items = [
        (
            i,
            np.where(p > 0, 1, 0) if preds_binary else p,
            np.where(g > 0, 1, 0) if gts_binary else g,
        )
        for i, p, g in items
    ]
    return evaluate(items, None if classes is None else range(1, classes + 1))
