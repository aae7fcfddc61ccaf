"""Training prompts drawn the way visual prompting produces them at inference.

Visual prompting gives a few positive points on the object and up to two negatives on
background (METHODS.md section 2); a tuned decoder sees the same kind of prompt in
training: 1..``max_pos`` positives inside the label, 0..``max_neg`` negatives outside,
as one multi-point prompt with labels 1/0.
"""

from __future__ import annotations

import torch


def sample_points(
    label: torch.Tensor, generator: torch.Generator, max_pos: int = 3, max_neg: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (N, 2) as (x, y) pixel centres of ``label`` (H, W bool), labels (N,) in {0, 1}."""
    pos = label.nonzero()
    neg = (~label).nonzero()
    n_pos = int(torch.randint(1, max_pos + 1, (1,), generator=generator))
    n_neg = int(torch.randint(0, max_neg + 1, (1,), generator=generator))
    picks, labels = [], []
    for cells, n, value in ((pos, n_pos, 1), (neg, n_neg, 0)):
        if len(cells) == 0 or n == 0:
            continue
        idx = torch.randperm(len(cells), generator=generator)[:n]
        picks.append(cells[idx])
        labels.append(torch.full((len(idx),), value, dtype=torch.int64))
    if not picks:  # empty label: one background point as a negative
        idx = torch.randint(0, len(neg), (1,), generator=generator)
        picks, labels = [neg[idx]], [torch.zeros(1, dtype=torch.int64)]
    yx = torch.cat(picks).float()
    return torch.stack([yx[:, 1], yx[:, 0]], dim=1) + 0.5, torch.cat(labels)
