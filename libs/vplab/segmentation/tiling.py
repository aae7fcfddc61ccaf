"""Large images as overlapping tiles with a halo (micro-sam's approach to SAM on big images).

An image larger than the encoder's input would be shrunk to fit it - a 4096 px slide to
1024 px, a quarter of its resolution. Instead it is cut into a grid of **cores** (disjoint,
``tile`` px) and each core is embedded with a **halo** of context around it: its
**window** (core + ``halo`` on every side, clipped to the image), at most the encoder's
input, so every window is embedded at the image's own resolution.

A prompt set is decoded on the one tile whose core holds its anchor (the first positive
point, else the box's centre, else the first point), in that tile's window; the window's
mask is placed back into the image. An object crossing a core border lies inside that
window as long as it reaches no more than ``halo`` past the border, so it comes back as
one mask. Prompt points outside the window are not seen by the decoder, and a mask is cut
at its window's edge: objects must be smaller than ``halo`` beyond their tile.

``TiledEmbedding`` is cached like an ``ImageEmbedding`` (one safetensors blob: the tiles'
features stacked, the geometry in the metadata); ``load_sam_embedding`` reads either.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vplab.blobs import safetensors_metadata
from vplab.errors import InvalidInput
from vplab.segmentation.embedding import ImageEmbedding

FORMAT = "vplab.sam-embedding-tiled/1"
Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive)


@dataclass(frozen=True)
class Tile:
    core: Box  # the pixels this tile answers for; the cores partition the image
    window: Box  # core + halo, clipped to the image: what is embedded

    @property
    def offset(self) -> tuple[int, int]:
        """(x, y) of the window's top-left corner in the image."""
        return self.window[1], self.window[0]

    def holds(self, x: float, y: float) -> bool:
        y0, x0, y1, x1 = self.core
        return y0 <= y < y1 and x0 <= x < x1


def default_halo(window: int) -> int:
    """An eighth of the window on each side: a 1024 px window has a 768 px core."""
    return window // 8


def needs_tiling(height: int, width: int, window: int) -> bool:
    """Tiles only for an image larger than the encoder's input (``window``)."""
    return max(height, width) > window


def tile_grid(height: int, width: int, window: int, halo: int) -> list[Tile]:
    """Row-major tiles of cores at most ``window - 2 * halo`` px whose windows are at most
    ``window`` px. An image that fits in one window is one tile: core = window = image."""
    if height < 1 or width < 1:
        raise InvalidInput(f"cannot tile a {width}x{height} image")
    if not 0 <= 2 * halo < window:
        raise InvalidInput(f"halo {halo} must be >= 0 and under half the window {window}")
    if not needs_tiling(height, width, window):
        return [Tile((0, 0, height, width), (0, 0, height, width))]
    core = window - 2 * halo

    def cuts(n: int) -> list[tuple[int, int]]:
        k = -(-n // core)  # ceil: equal cores, none larger than ``core``
        edges = [round(i * n / k) for i in range(k + 1)]
        return list(itertools.pairwise(edges))

    tiles = []
    for y0, y1 in cuts(height):
        for x0, x1 in cuts(width):
            win = (
                max(0, y0 - halo),
                max(0, x0 - halo),
                min(height, y1 + halo),
                min(width, x1 + halo),
            )
            tiles.append(Tile((y0, x0, y1, x1), win))
    return tiles


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    y0, x0, y1, x1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1])


@dataclass
class TiledEmbedding:
    """One ``ImageEmbedding`` per tile (each of its window: ``original_size`` = the
    window's size); ``original_size``: (H, W) of the whole image."""

    tiles: list[Tile]
    embeddings: list[ImageEmbedding]
    original_size: tuple[int, int]

    @property
    def features(self) -> torch.Tensor:
        """(n_tiles, C, g, g): every tile's encoder output, concatenated (a copy)."""
        return torch.cat([e.features for e in self.embeddings])

    @property
    def shape(self) -> tuple[int, ...]:
        """``features``' shape, without the copy (cache lookups report it)."""
        return (len(self.embeddings), *self.embeddings[0].features.shape[1:])

    @property
    def nbytes(self) -> int:
        return sum(e.features.numel() * e.features.element_size() for e in self.embeddings)

    def tile_of(self, x: float, y: float) -> int:
        """Index of the tile whose core holds (x, y) (edges belong to the last tile)."""
        H, W = self.original_size
        x, y = min(max(x, 0.0), W - 0.5), min(max(y, 0.0), H - 0.5)
        for i, t in enumerate(self.tiles):
            if t.holds(x, y):
                return i
        raise InvalidInput(f"point ({x:g}, {y:g}) is outside the {W}x{H} image")

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TiledEmbedding:
        return TiledEmbedding(
            self.tiles, [e.to(device, dtype) for e in self.embeddings], self.original_size
        )

    def to_bytes(self, dtype: torch.dtype = torch.bfloat16) -> bytes:
        features = torch.cat([e.features.detach().to("cpu", dtype) for e in self.embeddings])
        meta = {
            "format": FORMAT,
            "original_size": json.dumps(list(self.original_size)),
            "tiles": json.dumps(
                [
                    [list(t.core), list(t.window), list(e.input_size)]
                    for t, e in zip(self.tiles, self.embeddings)
                ]
            ),
        }
        return st_save({"features": features.contiguous()}, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes, dtype: torch.dtype = torch.float32) -> TiledEmbedding:
        try:
            meta = safetensors_metadata(data)
            if meta.get("format") != FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
            features = st_load(bytes(data))["features"].to(dtype)
            original = tuple(int(v) for v in json.loads(meta["original_size"]))
            rows = json.loads(meta["tiles"])
            if features.ndim != 4 or features.shape[0] != len(rows) or len(original) != 2:
                raise ValueError(f"features {tuple(features.shape)} for {len(rows)} tiles")
            tiles, embeddings = [], []
            for i, (core, window, input_size) in enumerate(rows):
                tile = Tile(tuple(int(v) for v in core), tuple(int(v) for v in window))  # type: ignore[arg-type]
                y0, x0, y1, x1 = tile.window
                size = (int(input_size[0]), int(input_size[1]))
                tiles.append(tile)
                embeddings.append(ImageEmbedding(features[i : i + 1], (y1 - y0, x1 - x0), size))
        except (SafetensorError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise InvalidInput(f"embedding bytes are not a valid {FORMAT} blob: {e}") from e
        return cls(tiles, embeddings, (original[0], original[1]))


def load_sam_embedding(data: bytes) -> ImageEmbedding | TiledEmbedding:
    """A cached SAM embedding of either kind."""
    try:
        tiled = safetensors_metadata(data).get("format") == FORMAT
    except Exception:  # noqa: BLE001 - not safetensors at all: from_bytes names the problem
        tiled = False
    return TiledEmbedding.from_bytes(data) if tiled else ImageEmbedding.from_bytes(data)


def prompt_anchor(
    coords: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None
) -> tuple[float, float] | None:
    """(x, y) that picks a prompt set's tile: its first positive point, else its box's
    centre, else its first point (``labels`` -1 are padding)."""
    if coords is not None and labels is not None:
        positive = np.nonzero(labels == 1)[0]
        if positive.size:
            return float(coords[positive[0], 0]), float(coords[positive[0], 1])
    if box is not None:
        return float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    if coords is not None and labels is not None:
        real = np.nonzero(labels >= 0)[0]
        if real.size:
            return float(coords[real[0], 0]), float(coords[real[0], 1])
    return None


__all__ = [
    "FORMAT",
    "Tile",
    "TiledEmbedding",
    "crop",
    "default_halo",
    "load_sam_embedding",
    "needs_tiling",
    "prompt_anchor",
    "tile_grid",
]
