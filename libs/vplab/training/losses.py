"""Segmentation loss: 0.2 x binary cross-entropy + 0.8 x Dice (METHODS.md section 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice over each item's pixels, averaged over the batch. Shapes (B, ...)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1 - (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, ce_weight: float = 0.2, dice_weight: float = 0.8
) -> torch.Tensor:
    target = target.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, target)
    return ce_weight * ce + dice_weight * dice_loss(logits, target)
