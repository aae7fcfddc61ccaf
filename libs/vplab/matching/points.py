"""Point prompts from a score map (METHODS section 2 step 2).

Positives: local maxima of the score over the candidate cells, spread out by keeping the
best per cell of a coarse grid over the candidates' bounding box, capped at ``max_points``;
or, in probabilistic mode, cells sampled in proportion to their score. Negatives: the
valid cells least similar to the reference. All points come back in original image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from vplab.errors import InvalidInput
from vplab.matching.geometry import LetterboxGrid


@dataclass
class PointPrompts:
    """Points for one class on one target image.

    positive: (P, 2) float (x, y) original pixels, best score first.
    negative: (Q, 2) float (x, y) original pixels; SAM label 0.
    positive_scores: (P,) the (normalised) score of each positive's cell.
    grid_cells: (P, 2) long (row, col) of each positive on the feature grid.
    negative_cells: (Q, 2) long (row, col) of each negative.
    """

    positive: torch.Tensor
    negative: torch.Tensor
    positive_scores: torch.Tensor
    grid_cells: torch.Tensor
    negative_cells: torch.Tensor

    @property
    def negative_labels(self) -> torch.Tensor:
        return torch.zeros(self.negative.shape[0], dtype=torch.long)

    def sam_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One SAM prompt per positive with all negatives appended.

        Returns coords (P, 1 + Q, 2) original pixels and labels (P, 1 + Q) with 1 for the
        positive and 0 for negatives (never -1: SAM ignores -1 points, METHODS section 1).
        """
        p, q = self.positive.shape[0], self.negative.shape[0]
        coords = torch.cat(
            [self.positive[:, None, :], self.negative[None].expand(p, q, 2)], dim=1
        )  # (P, 1 + Q, 2)
        labels = torch.zeros(p, 1 + q, dtype=torch.long)
        labels[:, 0] = 1
        return coords, labels


def normalise_scores(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Min-max over valid cells to [0, 1]; invalid cells -> 0. A flat map becomes all 1."""
    v = scores[valid]
    lo, hi = v.min(), v.max()
    if float(hi - lo) <= 1e-12:
        out = torch.ones_like(scores)
    else:
        out = (scores - lo) / (hi - lo)
    return torch.where(valid, out, torch.zeros_like(out))


def _local_maxima(s: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(Gh, Gw) bool: candidate cells equal to the max of their 3x3 neighbourhood."""
    masked = torch.where(candidates, s, torch.full_like(s, float("-inf")))
    pooled = F.max_pool2d(masked[None, None], kernel_size=3, stride=1, padding=1)[0, 0]
    return candidates & (masked >= pooled)


def _spread_and_cap(
    cells: torch.Tensor,
    cell_scores: torch.Tensor,
    candidates: torch.Tensor,
    bin_grid: int,
    max_points: int,
) -> torch.Tensor:
    """Keep the best cell per bin of a ``bin_grid`` x ``bin_grid`` grid laid over the
    candidates' bounding box, then the top ``max_points`` by score. Returns indices into
    ``cells`` ordered by descending score (ties broken by raster order, so deterministic)."""
    rc = candidates.nonzero()
    r0, c0 = rc.min(dim=0).values
    r1, c1 = rc.max(dim=0).values
    bh, bw = (r1 - r0 + 1).item(), (c1 - c0 + 1).item()
    br = ((cells[:, 0] - r0) * bin_grid) // bh
    bc = ((cells[:, 1] - c0) * bin_grid) // bw
    bins = br * bin_grid + bc  # (n,)
    order = torch.sort(-cell_scores, stable=True).indices  # best first
    pos = torch.arange(order.numel(), device=cells.device)
    first = torch.full((bin_grid * bin_grid,), order.numel(), dtype=torch.long, device=cells.device)
    first = first.scatter_reduce(0, bins[order], pos, reduce="amin")
    kept = first[first < order.numel()].sort().values  # positions in `order`, best first
    return order[kept][:max_points]


def select_points(
    scores: torch.Tensor,
    similarity: torch.Tensor,
    valid: torch.Tensor,
    grid: LetterboxGrid,
    threshold: float = 0.4,
    normalise: bool = True,
    max_points: int = 40,
    bin_grid: int = 8,
    num_negatives: int = 2,
    mode: Literal["deterministic", "probabilistic"] = "deterministic",
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> PointPrompts:
    """Pick positive and negative points for one class on one target.

    scores, similarity: (Gh, Gw) maps from a matcher; valid: (Gh, Gw) bool.
    threshold: candidates are valid cells with score >= threshold (after min-max
        normalisation over valid cells when ``normalise``; the prototype baseline passes
        ``normalise=False, threshold=0.65`` to threshold the raw cosine).
    mode: "deterministic" = local maxima (3x3), best per bin, top ``max_points``;
        "probabilistic" = ``num_samples`` candidate cells drawn without replacement with
        probability proportional to their score, using ``generator`` (seed it for
        reproducibility). ``num_samples=None`` draws as many points as the deterministic
        mode would pick (our choice, so both modes prompt SAM equally often); always
        capped at ``max_points`` and at the number of candidates.
    num_negatives: valid non-candidate cells with the lowest mean similarity (label 0).
    """
    if scores.shape != valid.shape or similarity.shape != valid.shape:
        raise InvalidInput("score, similarity and valid maps must have the same shape")
    if tuple(valid.shape) != tuple(grid.grid_hw):
        raise InvalidInput(f"maps {tuple(valid.shape)} do not fit grid {tuple(grid.grid_hw)}")
    if not bool(valid.any()):
        raise InvalidInput("target has no valid cells")
    if mode not in ("deterministic", "probabilistic"):
        raise InvalidInput(f"unknown point mode {mode!r}")
    valid = valid.bool()
    s = (
        normalise_scores(scores, valid)
        if normalise
        else torch.where(valid, scores, torch.zeros_like(scores))
    )
    candidates = valid & (s >= threshold)
    device = s.device
    empty_cells = torch.zeros(0, 2, dtype=torch.long, device=device)

    if bool(candidates.any()):
        maxima = _local_maxima(s, candidates).nonzero()  # (n, 2)
        keep = _spread_and_cap(
            maxima, s[maxima[:, 0], maxima[:, 1]], candidates, bin_grid, max_points
        )
        pos_cells = maxima[keep]
        if mode == "probabilistic":
            cand = candidates.nonzero()  # (n, 2)
            weights = s[candidates].double().cpu()
            if float(weights.sum()) <= 0:
                weights = torch.ones_like(weights)
            n = num_samples if num_samples is not None else pos_cells.shape[0]
            n = max(0, min(n, max_points, cand.shape[0]))
            idx = torch.multinomial(weights, n, replacement=False, generator=generator).to(device)
            pos_cells = cand[idx]
            pos_cells = pos_cells[
                torch.sort(-s[pos_cells[:, 0], pos_cells[:, 1]], stable=True).indices
            ]
    else:
        pos_cells = empty_cells

    # Negatives from cells that are valid and not candidates (fall back to any valid cell).
    pool = valid & ~candidates
    if not bool(pool.any()):
        pool = valid
    k = min(num_negatives, int(pool.sum()))
    sim = torch.where(pool, similarity, torch.full_like(similarity, float("inf"))).flatten()
    neg_flat = torch.sort(sim, stable=True).indices[:k]
    gw = valid.shape[1]
    neg_cells = torch.stack([neg_flat // gw, neg_flat % gw], dim=1)

    return PointPrompts(
        positive=grid.cell_centres_xy(pos_cells),
        negative=grid.cell_centres_xy(neg_cells),
        positive_scores=s[pos_cells[:, 0], pos_cells[:, 1]],
        grid_cells=pos_cells,
        negative_cells=neg_cells,
    )
