"""Soft matching (the SoftMatcher idea, METHODS section 2 step 1).

One matmul and a softmax per target: every masked reference patch spreads a probability
distribution over the valid target patches, and a target patch's score is its marginal
probability (the mean over reference patches).
"""

from __future__ import annotations

from typing import Literal

import torch

from vplab.errors import InvalidInput
from vplab.matching.maps import MatchMaps


def _check(ref_feats: torch.Tensor, tgt_feats: torch.Tensor, tgt_valid: torch.Tensor) -> None:
    if ref_feats.ndim != 2 or ref_feats.shape[0] == 0:
        raise InvalidInput("reference features must be a non-empty (m, C) matrix")
    if tgt_feats.ndim != 3 or tgt_feats.shape[-1] != ref_feats.shape[-1]:
        raise InvalidInput(
            f"target features {tuple(tgt_feats.shape)} do not fit reference features {tuple(ref_feats.shape)}"
        )
    if tuple(tgt_valid.shape) != tuple(tgt_feats.shape[:2]):
        raise InvalidInput("target valid mask does not match the target grid")
    if not bool(tgt_valid.any()):
        raise InvalidInput("target has no valid cells")


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def soft_match(
    ref_feats: torch.Tensor,
    tgt_feats: torch.Tensor,
    tgt_valid: torch.Tensor,
    temperature: float = 0.1,
    bidirectional: bool = False,
    ref_all_feats: torch.Tensor | None = None,
    bidirectional_combine: Literal["product", "sum"] = "product",
    score_mean: Literal["arithmetic", "geometric"] = "arithmetic",
    similarity: Literal["mean", "prototype"] = "mean",
) -> MatchMaps:
    """Soft-matching score map for one target.

    ref_feats: (m, C) L2-normalised masked reference patches, K shots concatenated.
    tgt_feats: (Gh, Gw, C) L2-normalised target patches.
    tgt_valid: (Gh, Gw) bool; padded cells are excluded from the softmax entirely, so
        they can neither score nor take probability mass from real cells.
    bidirectional: add a backward term, the softmax over reference patches for each target
        patch ("column softmax"), read at the masked rows. It is computed over
        ``ref_all_feats`` (all reference patches, masked and background, with the masked
        ones first in the same order as ``ref_feats``) when given, so a target patch that
        looks more like reference background than foreground is penalised; otherwise
        over ``ref_feats`` only.
    bidirectional_combine: how the two terms meet (our choice; METHODS says "add"):
        "product" (default) = mean_i P[i, j] * Q[i, j]: the terms are added in log space
        (dual softmax, a per-pair joint probability, as in the public SoftMatcher
        reimplementation). A target patch must be matched *and* match back.
        "sum" = minmax(mean_i P) + minmax(mean_i Q), each rescaled to [0, 1] over valid
        cells first because the two softmaxes run over sets of very different sizes. Weaker:
        the backward term alone rates anything more foreground- than background-like
        (e.g. a distractor) near the top, and the sum lets that through the 0.4 threshold.

    score_mean: how the reference patches' probabilities meet at a target patch.
        "arithmetic" (METHODS' default) = the marginal probability mean_i P[i, j];
        "geometric" = exp(mean_i log P[i, j]), the public SoftMatcher reimplementation's:
        a patch must be likely under every reference patch, not very likely under a few.
        The min-max normalised maps differ, so the point threshold must be calibrated per
        variant (#12; BENCHMARKS.md section 7).
    similarity: the map that scores masks. "mean" = mean_i S[i, j], i.e. the cosine to
        the *unnormalised* mean reference feature - shrunk by that mean's norm (< 1, the
        more varied the reference, the smaller), which deflates every mask score against
        the fixed 0.42 threshold; "prototype" = the cosine to the normalised mean.

    Returns MatchMaps(scores (Gh, Gw), similarity (Gh, Gw)); both 0 in invalid cells.
    """
    _check(ref_feats, tgt_feats, tgt_valid)
    gh, gw, _ = tgt_feats.shape
    tgt = tgt_feats[tgt_valid].to(ref_feats.dtype)  # (N, C), valid cells only
    sim = ref_feats @ tgt.T  # (m, N) cosine similarities
    logits = sim / temperature
    prob = torch.softmax(logits, dim=1)  # (m, N): each reference patch over target patches
    if score_mean == "arithmetic":
        score = prob.mean(dim=0)  # (N,) marginal probability of each target patch
    elif score_mean == "geometric":
        score = torch.log_softmax(logits, dim=1).mean(dim=0).exp()
    else:
        raise InvalidInput(f"unknown score_mean {score_mean!r}")

    if bidirectional:
        m = ref_feats.shape[0]
        if ref_all_feats is not None:
            if ref_all_feats.shape[0] < m:
                raise InvalidInput("ref_all_feats must contain the masked reference patches first")
            all_logits = (ref_all_feats.to(ref_feats.dtype) @ tgt.T) / temperature  # (M, N)
        else:
            all_logits = logits
        back = torch.softmax(all_logits, dim=0)[:m]  # (m, N): target patch over reference patches
        if bidirectional_combine == "sum":
            score = _minmax(score) + _minmax(back.mean(dim=0))
        elif bidirectional_combine == "product":
            score = (prob * back).mean(dim=0)
        else:
            raise InvalidInput(f"unknown bidirectional_combine {bidirectional_combine!r}")

    scores = torch.zeros(gh, gw, dtype=score.dtype, device=score.device)
    scores[tgt_valid] = score
    sim_map = torch.zeros_like(scores)
    if similarity == "mean":
        sim_map[tgt_valid] = sim.mean(dim=0)
    elif similarity == "prototype":
        proto = torch.nn.functional.normalize(ref_feats.mean(dim=0), dim=0)
        sim_map[tgt_valid] = tgt @ proto
    else:
        raise InvalidInput(f"unknown similarity {similarity!r}")
    return MatchMaps(scores, sim_map)
