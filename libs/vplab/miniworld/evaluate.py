"""Interactive-click evaluation of a SAM on miniworld instances (the click targets of #11).

Protocol (the usual one for interactive segmentation): the first click at the object's
centre (its deepest pixel), decoded with ``multimask_output=True`` keeping the mask with
the best predicted IoU; each further click at the deepest pixel of the current error
(positive on a miss, negative on a leak), decoded with the previous low-res logits as
``mask_input`` and a single output. Objects smaller than ``min_area`` pixels are skipped
(a 64x64 low-res mask cannot draw a 5-pixel object).

``breakdown=True`` adds what profiles a miss: the first click's best-of-3 mask (an oracle
pick: what a perfect IoU head would give), a tight box prompt (no click ambiguity at all),
and the 1-click figures by object area.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vplab.masks import iou as mask_iou
from vplab.masks.geometry import deepest_point
from vplab.miniworld.clicks import corrective_click
from vplab.miniworld.domains import render

SOURCE_TRAIN_SEED = 0  # render("source", 0, i): the pretraining stream
SOURCE_TEST_SEED = 1  # held-out source images (evaluation and benchmark)


def instance_targets(domain: str, seed: int, index: int, min_area: int, per_class: bool):
    """(image, list of gt masks): instances, or the target class's connected whole mask."""
    s = render(domain, seed, index)
    if per_class:
        m = s.mask(1)
        return s.image, [m] if m.sum() >= min_area else []
    return s.image, s.instance_masks(min_area)


@torch.no_grad()
def click_ious(seg, emb, gts: list[np.ndarray], n_clicks: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``gts``: non-empty bool masks of one image, ``emb`` its embedding by ``seg`` (a
    ``PromptSegmenter``) -> (len(gts), n_clicks) IoU after each click, every object in one
    batch, and (len(gts),) the best of the first click's three masks (an oracle pick)."""
    coords: list[list[tuple[float, float]]] = []
    for g in gts:
        first = deepest_point(g)
        assert first is not None  # non-empty masks only (evaluate_clicks filters)
        coords.append([first])
    labels = [[1] for _ in gts]
    out = np.zeros((len(gts), n_clicks))
    best_of_3 = np.zeros(len(gts))
    mask_in = None
    rows = torch.arange(len(gts))
    for k in range(n_clicks):
        res = seg.decode(
            emb,
            [np.array(c, float) for c in coords],
            [np.array(lab) for lab in labels],
            mask_input=mask_in,
            multimask_output=k == 0,
        )
        if k == 0:
            for i, g in enumerate(gts):
                best_of_3[i] = max(mask_iou(m.cpu().numpy(), g) for m in res.masks[i])
        best = res.iou_predictions.argmax(1)
        masks = res.masks[rows, best].cpu().numpy()
        mask_in = res.low_res_logits[rows, best][:, None]
        for i, g in enumerate(gts):
            out[i, k] = mask_iou(masks[i], g)
            nxt = corrective_click(masks[i], g)
            if nxt is None:  # perfect: click the centre again (keeps the batch rectangular)
                nxt = (coords[i][0][0], coords[i][0][1], 1)
            coords[i].append(nxt[:2])
            labels[i].append(nxt[2])
    return out, best_of_3


@torch.no_grad()
def box_ious(seg, emb, gts: list[np.ndarray]) -> np.ndarray:
    """(len(gts),): the IoU of each object's mask from a tight box prompt (one mask)."""
    boxes = []
    for g in gts:
        ys, xs = np.nonzero(g)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    res = seg.decode(emb, boxes=np.array(boxes, float), multimask_output=False)
    return np.array([mask_iou(res.masks[i, 0].cpu().numpy(), g) for i, g in enumerate(gts)])


AREA_BUCKETS = ((100, 300), (300, 1000), (1000, None))  # pixels of a 256 px image


def evaluate_clicks(
    sam,
    domain: str = "source",
    seed: int = SOURCE_TEST_SEED,
    n_images: int = 50,
    n_clicks: int = 3,
    min_area: int = 100,
    per_class: bool = False,
    breakdown: bool = False,
) -> dict[str, Any]:
    """mIoU over objects after 1..n_clicks clicks on ``n_images`` held-out images."""
    from vplab.segmentation import PromptSegmenter

    seg = PromptSegmenter(sam)
    rows, oracle, boxed, areas = [], [], [], []
    for i in range(n_images):
        image, masks = instance_targets(domain, seed, i, min_area, per_class)
        gts = [g for g in (np.asarray(m, bool) for m in masks) if g.any()]
        if not gts:
            continue
        emb = seg.embed(image)
        ious, best_of_3 = click_ious(seg, emb, gts, n_clicks)
        rows.append(ious)
        if breakdown:
            oracle.append(best_of_3)
            boxed.append(box_ious(seg, emb, gts))
            areas += [int(g.sum()) for g in gts]
    ious = np.concatenate(rows) if rows else np.zeros((0, n_clicks))
    result: dict[str, Any] = {
        f"miou_{k + 1}click": float(ious[:, k].mean()) for k in range(n_clicks)
    }
    result["objects"] = int(ious.shape[0])
    if breakdown and ious.shape[0]:
        best, box = np.concatenate(oracle), np.concatenate(boxed)
        result["miou_1click_best_of_3"] = float(best.mean())
        result["miou_box"] = float(box.mean())
        area = np.array(areas)
        by_area = {}
        for lo, hi in AREA_BUCKETS:
            sel = (area >= lo) & (area < (hi or area.max() + 1))
            if sel.any():
                by_area[f"{lo}-{hi or ''}"] = {
                    "objects": int(sel.sum()),
                    "miou_1click": float(ious[sel, 0].mean()),
                    "miou_1click_best_of_3": float(best[sel].mean()),
                    "miou_box": float(box[sel].mean()),
                }
        result["by_area"] = by_area
    return result
