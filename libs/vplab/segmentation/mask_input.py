"""A previous binary mask (image pixels) -> SAM's ``mask_input`` logits (1, 1, 4g, 4g).

Clients send the mask they kept (RLE), not SAM's low-res logits. Resize it like the
image, pad, area-downsample to the low-res frame and take the logit of the clipped
fraction (eps 1e-3 -> +-6.9): soft edges stay soft, and the scale matches the logits SAM
itself produces for confident pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vplab.errors import InvalidInput
from vplab.segmentation.transforms import preprocess_shape


def mask_to_mask_input(
    mask: np.ndarray, img_size: int, low_res: int, eps: float = 1e-3
) -> torch.Tensor:
    if mask.ndim != 2:
        raise InvalidInput(f"mask_input must be a 2-D mask, got shape {mask.shape}")
    h, w = preprocess_shape(mask.shape[0], mask.shape[1], img_size)
    t = torch.as_tensor(np.ascontiguousarray(mask), dtype=torch.float32)[None, None]
    t = F.interpolate(t, (h, w), mode="bilinear", align_corners=False)
    t = F.pad(t, (0, img_size - w, 0, img_size - h))
    t = F.interpolate(t, (low_res, low_res), mode="area").clamp(eps, 1 - eps)
    return torch.log(t / (1 - t))
