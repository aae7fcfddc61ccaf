"""SAM's pre- and post-processing, exactly as METHODS.md section 1 states it.

- resize the longest side to ``long_side`` with ``new = int(old * long_side / max(H, W) + 0.5)``
  (PIL bilinear on uint8, i.e. ``segment_anything``'s ``ResizeLongestSide.apply_image``),
- normalise on 0-255 with the pixel mean/std, pad bottom/right with zeros to a square,
- scale prompt coordinates by ``new / old`` per axis,
- low-res logits -> bilinear to the padded square -> crop the unpadded region ->
  bilinear to H x W (``Sam.postprocess_masks``).

The same letterbox (resize + bottom/right pad) is used for DINOv2 so its patch grid lands
cell for cell on SAM's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide
from torch.nn import functional as F


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(new_h, new_w) after resizing the longest side of (h, w) to ``long_side``."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """HxWx3 uint8 -> h'xw'x3 uint8 with max(h', w') == long_side."""
    # Delegating keeps us bit-identical with SamPredictor (PIL bilinear via torchvision).
    return ResizeLongestSide(long_side).apply_image(image)


def image_to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """HxWx3 uint8 -> (1, 3, H, W) float32 on ``device``, still 0-255."""
    t = torch.as_tensor(image, device=device).permute(2, 0, 1).contiguous()[None]
    return t.float()


def normalize_pad(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    size: int,
) -> torch.Tensor:
    """(B, 3, h, w) float -> (B, 3, size, size): ``(x - mean) / std``, zero pad bottom/right.

    Padding after normalisation means padded pixels are 0 in the normalised space, which
    is what ``Sam.preprocess`` does.
    """
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    x = (x - mean_t) / std_t
    h, w = x.shape[-2:]
    return F.pad(x, (0, size - w, 0, size - h))


def apply_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """(..., 2) xy in original pixels -> xy in the resized (unpadded) frame, float64."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    out = np.array(coords, dtype=float, copy=True)
    out[..., 0] = out[..., 0] * (new_w / old_w)
    out[..., 1] = out[..., 1] * (new_h / old_h)
    return out


def apply_boxes(boxes: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """(B, 4) xyxy in original pixels -> (B, 4) xyxy in the resized frame."""
    return apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size, long_side).reshape(
        -1, 4
    )


def apply_coords_torch(
    coords: torch.Tensor, original_size: tuple[int, int], long_side: int
) -> torch.Tensor:
    """Torch twin of ``apply_coords`` (keeps the autograd graph; float32)."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    scale = torch.tensor([new_w / old_w, new_h / old_h], dtype=torch.float, device=coords.device)
    return coords.to(torch.float) * scale


def apply_boxes_torch(
    boxes: torch.Tensor, original_size: tuple[int, int], long_side: int
) -> torch.Tensor:
    """Torch twin of ``apply_boxes``."""
    return apply_coords_torch(boxes.reshape(-1, 2, 2), original_size, long_side).reshape(-1, 4)


def postprocess_masks(
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    img_size: int,
) -> torch.Tensor:
    """(B, M, 4g, 4g) low-res logits -> (B, M, H, W) logits in original pixels.

    Upsample to the padded square first, then crop: cropping the low-res logits directly
    would misplace the edge by up to one low-res cell (4 px at 1024).
    """
    masks = F.interpolate(low_res, (img_size, img_size), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)


def letterbox(
    image: np.ndarray,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale: float = 1.0,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 HxWx3 -> ((1, 3, size, size) normalised, padded tensor; (h', w') resized size).

    ``scale`` divides the pixels before normalising (1/255 for ImageNet stats on 0-1).
    """
    resized = resize_longest_side(image, size)
    x = image_to_tensor(resized) * scale
    return normalize_pad(x, mean, std, size), (resized.shape[0], resized.shape[1])
