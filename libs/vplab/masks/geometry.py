"""Mask geometry on torch tensors: erosion depth, the deepest pixel, connected components.

``depth``: for each pixel of a mask, how many 3x3 erosions it survives (a chessboard
distance to the outside). The deepest pixel is where a user clicks an object ("centre
click"). ``components``: 8-connected components by max-pool label propagation (torch
only: no scipy in the stack), for the low-res frames training and validation work in.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def depth(masks: torch.Tensor, max_iter: int = 128) -> torch.Tensor:
    """(B, H, W) bool -> (B, H, W) float erosion depth (0 outside; border counts as outside)."""
    alive = masks.float()[:, None]
    out = torch.zeros_like(alive)
    for _ in range(max_iter):
        if not bool(alive.any()):
            break
        out += alive
        alive = -F.max_pool2d(-F.pad(alive, (1, 1, 1, 1), value=0.0), 3, 1)
    return out[:, 0]


def deepest_point(mask: np.ndarray | torch.Tensor) -> tuple[float, float] | None:
    """(x, y) pixel centre of the deepest pixel of a (H, W) mask; None if empty."""
    m = torch.as_tensor(np.asarray(mask, bool))
    if not bool(m.any()):
        return None
    d = depth(m[None])[0]
    idx = int(torch.argmax(d))
    y, x = divmod(idx, m.shape[1])
    return float(x) + 0.5, float(y) + 0.5


def components(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(H, W) bool -> ((H, W) int64 labels 1..n, 0 outside; n), 8-connected.

    Every foreground pixel starts with its own index; each round it takes the largest index
    in its 3x3 neighbourhood within the mask, until nothing changes (rounds ~ the longest
    path inside a component: fine for the low-res frames it is used on). Labels are then
    renumbered 1..n in raster order of each component's first pixel.
    """
    m = mask.bool()
    h, w = m.shape
    if not bool(m.any()):
        return torch.zeros(h, w, dtype=torch.long), 0
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w)
    lab = torch.where(m[None, None], ids, torch.zeros_like(ids))
    for _ in range(h * w):
        grown = F.max_pool2d(lab, 3, 1, padding=1)
        grown = torch.where(m[None, None], grown, torch.zeros_like(grown))
        if torch.equal(grown, lab):
            break
        lab = grown
    flat = lab.view(-1).long()
    uniq = torch.unique(flat[flat > 0])
    first = torch.stack([torch.nonzero(flat == u)[0, 0] for u in uniq])
    order = uniq[torch.argsort(first)]
    out = torch.zeros_like(flat)
    for k, u in enumerate(order.tolist(), start=1):
        out[flat == u] = k
    return out.view(h, w), len(order)
