"""Mask scoring and NMS by intersection-over-minimum (METHODS section 2 step 4)."""

from __future__ import annotations

import torch


def mask_scores(
    masks: torch.Tensor, iou_predictions: torch.Tensor, similarity: torch.Tensor
) -> torch.Tensor:
    """Score = predicted IoU x mean(similarity inside the mask).

    masks: (K, H, W) bool; iou_predictions: (K,); similarity: (H, W) upsampled to the image.
    An empty mask scores 0 (it has no pixels to average and nothing to contribute).
    """
    m = masks.to(similarity.dtype)
    area = m.flatten(1).sum(dim=1)  # (K,)
    inside = (m * similarity).flatten(1).sum(dim=1)  # (K,)
    mean_sim = torch.where(area > 0, inside / area.clamp_min(1), torch.zeros_like(area))
    return iou_predictions.to(similarity.dtype) * mean_sim


def nms_iom(masks: torch.Tensor, scores: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Greedy NMS on masks by intersection over the smaller mask's area.

    IoM rather than IoU because a part mask (e.g. one leaf) inside a whole-object mask has a
    small IoU but is still a duplicate; IoM catches it. A mask is dropped when its IoM with
    a higher-scored kept mask is > ``threshold``. Empty masks are always dropped.

    masks: (K, H, W) bool; scores: (K,). Returns kept indices, best score first.
    """
    k = masks.shape[0]
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=masks.device)
    masks = masks.bool()
    area = masks.flatten(1).sum(dim=1)  # (K,)
    order = torch.sort(scores, descending=True, stable=True).indices
    keep: list[int] = []
    # Pairwise tests against kept masks only, on bool masks: no (K, H*W) float copy, which
    # would be gigabytes for 40 prompts on a large image.
    for i in order.tolist():
        if int(area[i]) == 0:
            continue
        ok = True
        for j in keep:
            inter = int((masks[i] & masks[j]).sum())
            if inter / min(int(area[i]), int(area[j])) > threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return torch.tensor(keep, dtype=torch.long, device=masks.device)
