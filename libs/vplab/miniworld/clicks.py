"""Corrective clicks shared by evaluation and the benchmark: the next click goes to the
deepest pixel of the error region (the usual interactive segmentation protocol: click
where the error is largest; ``vplab.masks.geometry.depth``)."""

from __future__ import annotations

import numpy as np
import torch

from vplab.masks.geometry import depth


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
