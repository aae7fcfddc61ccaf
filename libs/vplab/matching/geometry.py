"""Letterbox geometry shared by SAM and DINOv2: image pixels <-> feature-grid cells.

Both models see the image resized so its longest side fills a square input frame, padded
bottom/right (METHODS section 1). A feature grid of ``Gh x Gw`` cells tiles that frame, so
cell ``(r, c)`` covers ``cell_px`` pixels of the padded frame, i.e. ``cell_px / scale``
pixels of the original image. Cells that lie wholly in the padding are *invalid*: they
carry no image content and must never be matched or used as points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from vplab.errors import InvalidInput


class Letterboxed(Protocol):
    """What ``LetterboxGrid.from_features`` reads (``vplab.models.PatchFeatures`` has it)."""

    @property
    def original_size(self) -> tuple[int, int]: ...

    @property
    def grid_size(self) -> tuple[int, int]: ...

    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class LetterboxGrid:
    """Geometry of one image on one feature grid.

    image_hw: original image size (H, W) in pixels.
    grid_hw: feature grid (Gh, Gw), e.g. (64, 64) for DINOv2 at 896 or SAM at 1024.
    padded_size: side of the square model input frame in pixels (896 = 64 x 14).
    """

    image_hw: tuple[int, int]
    grid_hw: tuple[int, int]
    padded_size: int

    def __post_init__(self) -> None:
        h, w = self.image_hw
        gh, gw = self.grid_hw
        if h <= 0 or w <= 0:
            raise InvalidInput(f"image size must be positive, got {self.image_hw}")
        if gh <= 0 or gw <= 0 or self.padded_size <= 0:
            raise InvalidInput(f"bad grid {self.grid_hw} / padded size {self.padded_size}")

    @classmethod
    def for_patches(cls, image_hw: tuple[int, int], grid: int, patch: int) -> LetterboxGrid:
        """Square grid of ``grid x grid`` patches of ``patch`` pixels (896 = 64 x 14)."""
        return cls((int(image_hw[0]), int(image_hw[1])), (grid, grid), grid * patch)

    @classmethod
    def from_features(cls, pf: Letterboxed) -> LetterboxGrid:
        """Geometry of a ``vplab.models.PatchFeatures`` (duck-typed: original_size,
        grid_size, size)."""
        h, w = pf.original_size
        gh, gw = pf.grid_size
        return cls((h, w), (gh, gw), int(pf.size))

    @property
    def scale(self) -> float:
        """Original pixels -> padded-frame pixels (longest side fills the frame)."""
        return self.padded_size / max(self.image_hw)

    @property
    def resized_hw(self) -> tuple[int, int]:
        # Same rounding as segment_anything's ResizeLongestSide.get_preprocess_shape.
        h, w = self.image_hw
        return int(h * self.scale + 0.5), int(w * self.scale + 0.5)

    @property
    def cell_px(self) -> tuple[float, float]:
        """Cell size (y, x) in padded-frame pixels."""
        return self.padded_size / self.grid_hw[0], self.padded_size / self.grid_hw[1]

    @property
    def valid_hw(self) -> tuple[int, int]:
        """Number of grid rows / cols that overlap image content (padding is bottom/right)."""
        nh, nw = self.resized_hw
        cy, cx = self.cell_px
        return min(self.grid_hw[0], math.ceil(nh / cy)), min(self.grid_hw[1], math.ceil(nw / cx))

    def valid_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(Gh, Gw) bool: True where a cell overlaps the image."""
        vh, vw = self.valid_hw
        valid = torch.zeros(self.grid_hw, dtype=torch.bool, device=device)
        valid[:vh, :vw] = True
        return valid

    def cell_centres_xy(self, cells: torch.Tensor) -> torch.Tensor:
        """Cells (P, 2) as (row, col) -> (P, 2) float (x, y) in original image pixels.

        Centre of cell (r, c) = ((c + 0.5) * cell_px / scale, (r + 0.5) * cell_px / scale),
        clipped into the image: a valid edge cell may be only partly covered by the image,
        and its centre can then fall into the padding.
        """
        cy, cx = self.cell_px
        s = self.scale
        cells = cells.reshape(-1, 2).to(torch.float32)
        x = (cells[:, 1] + 0.5) * cx / s
        y = (cells[:, 0] + 0.5) * cy / s
        h, w = self.image_hw
        return torch.stack([x.clamp(0, w - 1), y.clamp(0, h - 1)], dim=1)

    def upsample_to_image(
        self, grid_map: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(Gh, Gw) map -> (H, W) by bilinear interpolation between cell centres.

        Only the valid rectangle is sampled (``padding_mode="border"`` replicates its edge),
        so values in padded cells never bleed into the image border.
        """
        if valid is None:
            valid = self.valid_mask(grid_map.device)
        rows = valid.any(dim=1).nonzero()
        cols = valid.any(dim=0).nonzero()
        if rows.numel() == 0 or cols.numel() == 0:
            raise InvalidInput("no valid cells on the feature grid")
        vh, vw = int(rows.max()) + 1, int(cols.max()) + 1
        src = grid_map[:vh, :vw].to(torch.float32)[None, None]  # (1, 1, vh, vw)
        h, w = self.image_hw
        cy, cx = self.cell_px
        s = self.scale
        # Pixel centre (x + 0.5) in original pixels -> continuous cell coordinate, where
        # cell c's centre sits at c; grid_sample(align_corners=True) maps -1..1 to 0..n-1.
        u = (torch.arange(w, device=src.device, dtype=torch.float32) + 0.5) * s / cx - 0.5
        v = (torch.arange(h, device=src.device, dtype=torch.float32) + 0.5) * s / cy - 0.5
        gu = 2 * u / max(vw - 1, 1) - 1 if vw > 1 else torch.zeros_like(u)
        gv = 2 * v / max(vh - 1, 1) - 1 if vh > 1 else torch.zeros_like(v)
        grid = torch.stack(
            torch.meshgrid(gv, gu, indexing="ij")[::-1], dim=-1
        )  # (H, W, 2) as (x, y)
        out = F.grid_sample(
            src, grid[None], mode="bilinear", padding_mode="border", align_corners=True
        )
        return out[0, 0]  # (H, W)
