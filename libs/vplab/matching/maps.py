"""What a matcher returns for one target: a score map and a similarity map."""

from __future__ import annotations

from typing import NamedTuple

import torch


class MatchMaps(NamedTuple):
    """Per-cell maps on the target grid; values in invalid (padded) cells are 0 and meaningless.

    scores: (Gh, Gw) what point selection ranks (soft-matching probability, or cosine
        to the prototype).
    similarity: (Gh, Gw) mean cosine similarity to the masked reference patches; used to
        pick negatives (lowest) and to score masks (METHODS section 2, steps 2 and 4).
    """

    scores: torch.Tensor
    similarity: torch.Tensor
