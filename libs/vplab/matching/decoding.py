"""Point prompts -> scored, de-duplicated SAM masks for one class (METHODS section 2,
steps 3-4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vplab.matching.nms import mask_scores, nms_iom
from vplab.matching.points import PointPrompts


@dataclass
class ClassPrediction:
    """What one class's pass produced on one target (all tensors on the CPU).

    mask: (H, W) bool, union of the surviving prompt masks.
    points: the selected points; point_coords (P, 1 + Q, 2) / point_labels (P, 1 + Q) are
        the prompts exactly as sent to SAM (positive first, label 1; negatives label 0).
    prompt_masks: (P, H, W) bool, the best-IoU mask of each prompt (after refinement).
    prompt_iou: (P,) SAM's predicted IoU of that mask; prompt_scores: (P,) its score
        = predicted IoU x mean similarity inside the mask.
    kept: (K,) indices of the prompts whose masks survive the score threshold and NMS,
        best first; ``masks``/``scores`` are those prompts' masks and scores.
    """

    class_id: int
    mask: torch.Tensor
    points: PointPrompts
    point_coords: torch.Tensor
    point_labels: torch.Tensor
    prompt_masks: torch.Tensor
    prompt_iou: torch.Tensor
    prompt_scores: torch.Tensor
    kept: torch.Tensor

    @property
    def masks(self) -> torch.Tensor:
        return self.prompt_masks[self.kept]

    @property
    def scores(self) -> torch.Tensor:
        return self.prompt_scores[self.kept]


def _best(masks: torch.Tensor, iou: torch.Tensor, low_res: torch.Tensor):
    """Keep each prompt's mask with the highest predicted IoU: (B, M, ...) -> (B, ...)."""
    idx = iou.argmax(dim=1)  # (B,)
    rows = torch.arange(iou.shape[0], device=iou.device)
    return masks[rows, idx], iou[rows, idx], low_res[rows, idx]


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool -> (B, 4) float xyxy boxes around each mask (pixel edges: x1 = last
    column + 1). Empty masks get a zero box."""
    _b, h, w = masks.shape
    cols = masks.any(dim=1)  # (B, W)
    rows = masks.any(dim=2)  # (B, H)
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    big = torch.tensor(10**9, device=masks.device)
    x0 = torch.where(cols, xs, big).amin(dim=1)
    x1 = torch.where(cols, xs, -1).amax(dim=1) + 1
    y0 = torch.where(rows, ys, big).amin(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    return torch.where(masks.flatten(1).any(dim=1)[:, None], boxes, torch.zeros_like(boxes))


def decode_class(
    segmenter: Any,
    embedding: Any,
    points: PointPrompts,
    similarity_img: torch.Tensor,
    class_id: int,
    refine: bool = False,
    refine_multimask: bool = False,
    score_threshold: float = 0.42,
    nms_threshold: float = 0.5,
) -> ClassPrediction:
    """Decode one prompt per positive point (negatives appended) in ONE decoder call
    through the segmenter's served output, keep each prompt's best-IoU mask, optionally
    refine, score, threshold, NMS, union.

    segmenter: ``vplab.segmentation.PromptSegmenter`` (or a tuned one with the same API).
    similarity_img: (H, W) mean reference similarity upsampled to the target image.
    """
    h, w = embedding.original_size
    coords, labels = points.sam_prompts()  # (P, 1 + Q, 2), (P, 1 + Q)
    p = coords.shape[0]
    if p == 0:
        empty = torch.zeros(0, dtype=torch.float32)
        return ClassPrediction(
            class_id,
            torch.zeros(h, w, dtype=torch.bool),
            points,
            coords,
            labels,
            torch.zeros(0, h, w, dtype=torch.bool),
            empty,
            empty,
            torch.zeros(0, dtype=torch.long),
        )

    # The segmenter's served output: the base model's 3 masks (best by predicted IoU), or
    # the one output a tuned model was trained on (#12: never a head it was not trained for).
    out = segmenter.decode(embedding, coords.numpy(), labels.numpy(), multimask_output=None)
    masks, iou, low_res = _best(
        out.masks, out.iou_predictions, out.low_res_logits
    )  # (P, H, W), (P,), (P, g, g)

    if refine:
        # Second pass per prompt: same points, the first mask's box, and its low-res logits
        # as the dense prompt (PerSAM/Matcher-style cascade). Empty masks have no box and
        # keep their first-pass result.
        nonempty = masks.flatten(1).any(dim=1).nonzero().flatten()
        if nonempty.numel() > 0:
            sel = nonempty.cpu()
            boxes = mask_boxes(masks[nonempty]).cpu().numpy().astype(np.float64)
            ref = segmenter.decode(
                embedding,
                coords[sel].numpy(),
                labels[sel].numpy(),
                boxes=boxes,
                mask_input=low_res[nonempty][:, None],  # (n, 1, g, g)
                # A tuned model keeps its one trained output; the base model gives token 0
                # (the prompt is unambiguous) unless refine_multimask asks for its 3 masks.
                multimask_output=None
                if refine_multimask or segmenter.output != "best_of_3"
                else False,
            )
            m2, i2, _ = _best(ref.masks, ref.iou_predictions, ref.low_res_logits)
            masks, iou = masks.clone(), iou.clone()
            masks[nonempty], iou[nonempty] = m2, i2

    masks, iou = masks.cpu(), iou.float().cpu()
    scores = mask_scores(masks, iou, similarity_img.float().cpu())  # (P,)
    above = (scores >= score_threshold).nonzero().flatten()
    kept = above[nms_iom(masks[above], scores[above], nms_threshold)]
    union = masks[kept].any(dim=0) if kept.numel() else torch.zeros(h, w, dtype=torch.bool)
    return ClassPrediction(class_id, union, points, coords, labels, masks, iou, scores, kept)
