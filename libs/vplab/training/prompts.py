"""Training prompts drawn the way visual prompting produces them at inference.

Visual prompting gives a few positive points on the object and up to two negatives on
background (METHODS.md section 2); a tuned decoder sees the same kind of prompt in
training: 1..``max_pos`` positives inside the label, 0..``max_neg`` negatives outside,
as one multi-point prompt with labels 1/0.
"""

from __future__ import annotations

import torch

# Candidate pixels drawn per rejection round. Regions covering more than ~0.1 % of the
# image almost surely get their points from one round; smaller ones fall back to an exact
# scan of their pixels.
_CANDIDATES = 4096


def _distinct_cells(region: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` distinct (y, x) cells of ``region`` (H, W bool), uniform without replacement;
    fewer if the region has fewer cells.

    Rejection sampling: uniform candidates over the image, keeping the first ``n`` distinct
    ones inside the region, is exactly uniform sampling without replacement, and costs a
    few thousand lookups instead of a ``nonzero`` + ``randperm`` over a megapixel label
    (~25 ms per training item at 1024 px, BENCHMARKS.md ``train``).
    """
    h, w = region.shape
    flat = region.reshape(-1)
    candidates = torch.randint(0, h * w, (_CANDIDATES,), generator=generator)
    picked: list[int] = []
    for idx in candidates[flat[candidates]].tolist():
        if idx not in picked:
            picked.append(idx)
            if len(picked) == n:
                break
    if len(picked) < n:  # tiny (or empty) region: scan it
        cells = flat.nonzero()[:, 0]
        picked = cells[torch.randperm(len(cells), generator=generator)[:n]].tolist()
    index = torch.tensor(picked, dtype=torch.int64)
    return torch.stack([index // w, index % w], dim=1)


def sample_points(
    label: torch.Tensor, generator: torch.Generator, max_pos: int = 3, max_neg: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (N, 2) as (x, y) pixel centres of ``label`` (H, W bool), labels (N,) in {0, 1}."""
    n_pos = int(torch.randint(1, max_pos + 1, (1,), generator=generator))
    n_neg = int(torch.randint(0, max_neg + 1, (1,), generator=generator))
    picks, labels = [], []
    for region, n, value in ((label, n_pos, 1), (~label, n_neg, 0)):
        if n == 0:
            continue
        cells = _distinct_cells(region, n, generator)
        if len(cells):
            picks.append(cells)
            labels.append(torch.full((len(cells),), value, dtype=torch.int64))
    if not picks:  # empty label and no negative drawn: one background point as a negative
        picks, labels = [_distinct_cells(~label, 1, generator)], [torch.zeros(1, dtype=torch.int64)]
    yx = torch.cat(picks).float()
    return torch.stack([yx[:, 1], yx[:, 0]], dim=1) + 0.5, torch.cat(labels)
