"""Reference mask (image pixels) -> patch mask on the feature grid (METHODS section 1)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vplab.errors import InvalidInput
from vplab.matching.geometry import LetterboxGrid


def _as_bool_tensor(mask: Any) -> torch.Tensor:
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise InvalidInput("reference mask must be an array")
    if mask.ndim != 2:
        raise InvalidInput(f"reference mask must be 2-D (H, W), got shape {tuple(mask.shape)}")
    return mask != 0


# The least coverage of one cell that still counts as a thin structure rather than a speck:
# a 2 px line through a 14 px cell covers 0.14, a 3 x 3 px dot 0.05.
THIN_MIN_COVERAGE = 0.1


def patch_mask(
    mask: Any,
    grid: LetterboxGrid,
    threshold: float = 0.5,
    antialias: bool = True,
) -> torch.Tensor:
    """Binary mask (H, W) in original image pixels -> (Gh, Gw) bool patch mask.

    The mask is letterboxed exactly like the image (padded bottom/right to a square, so one
    scale applies to both axes), bilinearly resized to the grid and thresholded at
    ``> threshold``; padded cells are always False. Coverage is measured against the image
    part of each cell, so edge cells that are partly padding are judged on their image part.

    ``antialias=True`` (our default; a choice METHODS leaves open) makes the bilinear
    resize average over each cell's footprint, so a cell is on when roughly more than half
    of it is covered, whatever the image resolution. With ``False`` each cell only samples
    the 2x2 pixels around its centre (plain ``F.interpolate``), which is noisy for large
    images.

    A mask thinner than half a cell everywhere (no cell passes) falls back to the cells it
    covers at least half as well as its best-covered cell, if that one is covered by at
    least ``THIN_MIN_COVERAGE``.

    Raises InvalidInput if the mask size differs from the image, or nothing survives.
    """
    m = _as_bool_tensor(mask)
    if tuple(m.shape) != tuple(grid.image_hw):
        raise InvalidInput(
            f"reference mask size {tuple(m.shape)} does not match image size {tuple(grid.image_hw)}"
        )
    h, w = grid.image_hw
    side = max(h, w)
    # Letterbox in original pixels: the padded square of side max(H, W) is exactly the
    # model's padded frame divided by the scale, so resizing it to the grid puts every
    # cell over the same image region as the model's patch.
    pad = (0, side - w, 0, side - h)
    both = torch.stack([m.to(torch.float32), torch.ones(h, w, device=m.device)])  # (2, H, W)
    both = F.interpolate(
        F.pad(both, pad)[None],
        size=grid.grid_hw,
        mode="bilinear",
        align_corners=False,
        antialias=antialias,
    )[0]  # (2, Gh, Gw): mask coverage, image coverage
    # Coverage relative to the part of the cell that is image: an edge cell only partly
    # inside the image counts as on when the mask fills most of that part.
    frac = both[0] / both[1].clamp_min(1e-6)
    valid = grid.valid_mask(frac.device)
    out = (frac > threshold) & valid
    best = float((frac * valid).max())
    if not bool(out.any()) and best >= THIN_MIN_COVERAGE:
        # A thin structure (a crack, a vessel, a fibre) covers no cell by half: take the
        # cells it covers at least half as well as its best-covered one, instead of
        # refusing a correctly drawn reference (a deviation from METHODS, docs/FIDELITY.md).
        out = (frac >= best / 2) & valid
    if not bool(out.any()):
        raise InvalidInput("reference mask is empty / too small for the patch grid")
    return out


def masked_features(features: torch.Tensor, pmask: torch.Tensor) -> torch.Tensor:
    """(Gh, Gw, C) features and (Gh, Gw) bool patch mask -> (m, C) masked rows."""
    if features.shape[:2] != pmask.shape:
        raise InvalidInput(
            f"patch mask {tuple(pmask.shape)} does not fit features {tuple(features.shape)}"
        )
    return features[pmask]
