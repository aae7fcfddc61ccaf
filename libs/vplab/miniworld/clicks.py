"""Click geometry shared by pretraining, evaluation and the benchmark.

``depth``: for each pixel of a mask, how many 3x3 erosions it survives (a chessboard
distance to the outside). The "centre click" of an object is its deepest pixel; a
corrective click goes to the deepest pixel of the error region (the usual interactive
segmentation protocol: click where the error is largest).
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


def corrective_click(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, int] | None:
    """The next click: (x, y, label) at the deepest error pixel; label 1 where the object
    is missed (false negative), 0 where background was included. None if perfect."""
    fn, fp = gt & ~pred, pred & ~gt
    if not (fn.any() or fp.any()):
        return None
    d = depth(torch.as_tensor(np.stack([fn, fp])))
    which = int(torch.argmax(d.flatten(1).max(1).values))
    idx = int(torch.argmax(d[which]))
    y, x = divmod(idx, gt.shape[1])
    return float(x) + 0.5, float(y) + 0.5, 1 - which
