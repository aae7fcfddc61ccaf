"""Prototype baseline (METHODS section 2): cosine to the mean masked reference feature.

Kept for comparison with soft matching; the decoding that follows is the same. Its score
is an absolute cosine, so point selection thresholds it at ``prototype_threshold`` (0.65)
without min-max normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vplab.matching.maps import MatchMaps
from vplab.matching.soft_matcher import _check

DEFAULT_PROTOTYPE_THRESHOLD = 0.65


def prototype(ref_feats: torch.Tensor) -> torch.Tensor:
    """(m, C) masked reference patches -> (C,) mean feature, re-normalised."""
    return F.normalize(ref_feats.mean(dim=0), dim=0)


def prototype_match(
    ref_feats: torch.Tensor, tgt_feats: torch.Tensor, tgt_valid: torch.Tensor
) -> MatchMaps:
    """Cosine of every valid target cell to the prototype; 0 in invalid cells.

    ref_feats (m, C), tgt_feats (Gh, Gw, C) normalised, tgt_valid (Gh, Gw) bool.
    Returns MatchMaps(scores=cosine to prototype, similarity=mean cosine to the patches).
    """
    _check(ref_feats, tgt_feats, tgt_valid)
    proto = prototype(ref_feats).to(tgt_feats.dtype)  # (C,)
    cos = tgt_feats @ proto  # (Gh, Gw)
    mean_sim = tgt_feats @ ref_feats.mean(dim=0).to(
        tgt_feats.dtype
    )  # mean_i <f_i, t> = <mean_i f_i, t>
    zero = torch.zeros_like(cos)
    return MatchMaps(torch.where(tgt_valid, cos, zero), torch.where(tgt_valid, mean_sim, zero))
