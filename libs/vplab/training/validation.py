"""The serving code path on ground-truth prompts: how a trainer validates and how the
benchmark's GT-prompt tables score a (tuned) decoder (#12: validation measures what is
deployed, not a head or prompt form serving never uses)."""

from __future__ import annotations

from typing import Any

import torch


def served_mask(segmenter: Any, embedding: Any, points: Any) -> torch.Tensor:
    """(H, W) bool: ``decode_class`` - the visual-prompting decoder step, with the
    segmenter's served output, mask scores, threshold, NMS and union - on ``points``
    (``PointPrompts``, e.g. ``validation_prompts``). Without a matcher the similarity is
    1 everywhere, so a mask's score is its predicted IoU."""
    from vplab.matching.config import VisualPromptConfig, mask_score_threshold
    from vplab.matching.decoding import decode_class

    vp = VisualPromptConfig()
    h, w = embedding.original_size
    return decode_class(
        segmenter,
        embedding,
        points,
        torch.ones(h, w),
        1,
        refine=vp.refine,
        score_threshold=mask_score_threshold(vp, segmenter),
        nms_threshold=vp.nms_iom,
    ).mask
