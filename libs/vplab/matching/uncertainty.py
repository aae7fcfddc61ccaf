"""Which visual-prompting results to correct first: a per-target uncertainty.

Visual prompting has two signals without labels: the matcher's own confidence (the best
surviving mask score of each class) and how much a cheap variant disagrees - the other
matcher (soft vs prototype) on the same cached embeddings costs one more decoder pass per
class and no encoder pass. ``uncertainty = 0.5 * (1 - mean class score) + 0.5 *
disagreement``, the disagreement being 1 - the mean per-class IoU of the two label maps
(a class both leave empty agrees). Higher: correct it first (BENCHMARKS.md section 10).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vplab.matching.pipeline import VisualPromptResult


@dataclass(frozen=True)
class Uncertainty:
    score: float  # mean over the classes of the best surviving mask score, in [0, 1]
    disagreement: float  # 1 - mean per-class IoU with the variant, in [0, 1]
    value: float  # the ranking value


def class_score(result: VisualPromptResult, class_id: int) -> float:
    pred = result.classes.get(class_id)
    return float(pred.scores.max()) if pred is not None and len(pred.scores) else 0.0


def uncertainty(
    result: VisualPromptResult, variant: VisualPromptResult, classes: Sequence[int]
) -> Uncertainty:
    scores, agreement = [], []
    for class_id in classes:
        scores.append(min(max(class_score(result, class_id), 0.0), 1.0))
        a, b = result.label_map == class_id, variant.label_map == class_id
        union = int((a | b).sum())
        agreement.append(int((a & b).sum()) / union if union else 1.0)
    score = float(np.mean(scores)) if scores else 0.0
    disagreement = 1.0 - float(np.mean(agreement)) if agreement else 0.0
    return Uncertainty(score, disagreement, 0.5 * (1.0 - score) + 0.5 * disagreement)
