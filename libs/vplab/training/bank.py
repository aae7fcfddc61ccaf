"""What the training loop reads per view, computed once before the loop.

Depending on the method's ``encoder_mode`` a bank item holds:
  frozen: the image embedding (1, C, g, g)             - the encoder never runs in the loop
  late:   the activation entering ``start_block`` (1, g, g, D) - only late blocks run
  full:   the preprocessed input (1, 3, S, S)          - the whole encoder runs
plus the low-res target and the view's label for prompt sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from vplab.masks.geometry import components
from vplab.segmentation.transforms import (
    image_to_tensor,
    normalize_pad,
    preprocess_shape,
    resize_longest_side,
)
from vplab.training.augment import View
from vplab.training.data import LabeledImage


@dataclass
class BankItem:
    name: str
    view: str
    feature: torch.Tensor  # see module docstring; on CPU
    label: torch.Tensor  # (H, W) bool, in the view's pixel frame
    target: torch.Tensor  # (1, L, L) float in [0, 1], the label in the low-res logit frame
    input_size: tuple[int, int]  # resized (h, w) before padding
    original_size: tuple[int, int]  # (H, W) of the view
    _components: tuple[torch.Tensor, int] | None = field(default=None, repr=False)

    def components(self) -> tuple[torch.Tensor, int]:
        """The target's connected components in the low-res frame (computed once)."""
        if self._components is None:
            self._components = components(self.target[0] > 0)
        return self._components


class FeatureCache(Protocol):
    """Optional persistent cache of bank features, keyed by (image name, view, what) where
    what is "emb" or "late{k}". It must be scoped to the encoder weights it was computed
    with (the service's ``StoreFeatureCache`` is, through the encoder id)."""

    def get(self, name: str, view: str, what: str) -> torch.Tensor | None: ...

    def put(self, name: str, view: str, what: str, value: torch.Tensor) -> torch.Tensor:
        """Store ``value``; return it as ``get`` will return it (e.g. rounded to bf16), so a
        run that computed the bank and one that read it back see the same numbers."""
        ...


def preprocess(sam: Sam, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """(H, W, 3) uint8 -> normalised, padded (1, 3, S, S) float and the resized (h, w)."""
    size = sam.image_encoder.img_size
    resized = resize_longest_side(image, size)
    x = image_to_tensor(resized, sam.pixel_mean.device)
    return normalize_pad(x, sam.pixel_mean, sam.pixel_std, size), resized.shape[:2]


def lowres_target(sam: Sam, label: np.ndarray, lowres: int) -> torch.Tensor:
    """The label resized like the image, padded, then area-downsampled to (1, L, L)."""
    size = sam.image_encoder.img_size
    h, w = preprocess_shape(label.shape[0], label.shape[1], size)
    t = torch.as_tensor(label, dtype=torch.float32)[None, None]
    t = F.interpolate(t, (h, w), mode="bilinear", align_corners=False)
    t = F.pad(t, (0, size - w, 0, size - h))
    return F.interpolate(t, (lowres, lowres), mode="area")[0]


@torch.no_grad()
def encoder_input_to_feature(
    sam: Sam, x: torch.Tensor, mode: str, start_block: int
) -> torch.Tensor:
    enc = sam.image_encoder
    if mode == "full":
        return x
    if mode == "frozen":
        return enc(x)
    h = enc.patch_embed(x)
    if enc.pos_embed is not None:
        h = h + enc.pos_embed
    for blk in enc.blocks[:start_block]:
        h = blk(h)
    return h


def make_item(
    sam: Sam,
    name: str,
    view: str,
    image: np.ndarray,
    label: np.ndarray,
    mode: str,
    start_block: int = 0,
    feature: torch.Tensor | None = None,
) -> BankItem:
    """One view as the training loop reads it (``feature`` computed unless given)."""
    grid = sam.image_encoder.img_size // sam.image_encoder.patch_embed.proj.kernel_size[0]
    x, input_size = preprocess(sam, image)
    if feature is None:
        feature = encoder_input_to_feature(sam, x, mode, start_block).cpu()
    return BankItem(
        name=name,
        view=view,
        feature=feature,
        label=torch.as_tensor(np.ascontiguousarray(label)),
        target=lowres_target(sam, label, 4 * grid),  # SAM's decoder upscales 4x
        input_size=input_size,
        original_size=(int(label.shape[0]), int(label.shape[1])),
    )


def build_bank(
    sam: Sam,
    samples: list[LabeledImage],
    views: list[View],
    mode: str,
    start_block: int = 0,
    cache: FeatureCache | None = None,
    on_item: Callable[[int, int], None] | None = None,
) -> list[BankItem]:
    """Compute the bank, reading and filling ``cache`` for encoder outputs ("full" mode
    stores only the preprocessed input, which is cheap to recompute)."""
    items, total = [], len(samples) * len(views)
    what = "emb" if mode == "frozen" else f"late{start_block}"
    feature_cache = cache if mode != "full" else None
    shared: dict[tuple[str, str], torch.Tensor] = {}  # the classes of one image share its features
    for sample in samples:
        for view in views:
            image, label = view.apply(sample.image, sample.label)
            feature = shared.get((sample.key, view.name))
            if feature is None and feature_cache is not None:
                feature = feature_cache.get(sample.key, view.name, what)
            item = make_item(sam, sample.name, view.name, image, label, mode, start_block, feature)
            if feature is None and feature_cache is not None:
                item.feature = feature_cache.put(sample.key, view.name, what, item.feature)
            shared[(sample.key, view.name)] = item.feature
            items.append(item)
            if on_item is not None:
                on_item(len(items), total)
    return items
