"""DINOv2 through timm, and dense patch features letterboxed onto SAM's grid.

Models are timm ``VisionTransformer``s built with ``dynamic_img_size=True`` so any
letterbox size (896 -> 64x64 grid, 518 -> 37x37) works with the 518-px position embedding
interpolated on the fly. Checkpoints may be timm state dicts or Meta's original
``dinov2_vit*14_pretrain.pth`` files; timm's own ``checkpoint_filter_fn`` maps the latter
(``mask_token`` dropped, SwiGLU ``w12``/``w3`` -> ``fc1``/``fc2``, registers, pos-embed
resampling), so there is no hand-written key remapping here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch.nn import functional as F

from vplab.errors import InvalidInput
from vplab.images import check_rgb_image
from vplab.models.checkpoint import load_strict, read_checkpoint
from vplab.segmentation.transforms import letterbox

if TYPE_CHECKING:
    from vplab.storage import ArtifactStore

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 896  # 64 x 14: the 64x64 grid matches SAM's embedding cell for cell
TINY_SEED = 0

DINOV2_NAMES: tuple[str, ...] = (
    "vit_small_patch14_dinov2",
    "vit_base_patch14_dinov2",
    "vit_large_patch14_dinov2",
    "vit_giant_patch14_dinov2",
    "dinov2_tiny",
    "dinov2_mini",
)

# Same timm class and DINOv2 recipe (patch 14, LayerScale, no head); tiny sizes.
_TINY_ARGS = dict(embed_dim=48, depth=2, num_heads=2, img_size=224)
# The embedded default (vplab.miniworld.pretrain_dino): 6 blocks of 96-d, trained at 224 px.
_MINI_ARGS = dict(embed_dim=96, depth=6, num_heads=3, img_size=224)
_SMALL_ARGS = {"dinov2_tiny": _TINY_ARGS, "dinov2_mini": _MINI_ARGS}
# The letterbox side a model's features are meant for when the caller gives none: the
# official models match SAM's 64x64 grid at 896; dinov2_mini was trained at 224, whose
# 16x16 grid lands cell for cell on sam_mini's (256 px, patch 16).
NATIVE_SIZE = {"dinov2_mini": 224}


@dataclass
class PatchFeatures:
    """Dense features of one letterboxed image.

    ``features``: (Gh, Gw, C) float32, L2-normalised per cell.
    ``valid``: (Gh, Gw) bool, True where the cell contains image pixels (False = padding
    only; never match or pick points there).
    """

    features: torch.Tensor
    valid: torch.Tensor
    original_size: tuple[int, int]  # (H, W) of the input image
    input_size: tuple[int, int]  # (h', w') after resizing, before padding
    size: int  # letterbox side
    patch_size: int

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.features.shape[0], self.features.shape[1])


def build_dinov2(
    name: str,
    checkpoint: str | Path | None = None,
    sha256: str | None = None,
    store: ArtifactStore | None = None,
    seed: int = TINY_SEED,
    cache_dir: str | Path | None = None,
    random_init: bool = False,
) -> VisionTransformer:
    """Build DINOv2 ``name`` (one of ``DINOV2_NAMES``) in eval mode on the CPU.

    Without ``checkpoint`` the weights are random, deterministic given ``seed``, except for
    the embedded ``dinov2_mini``, whose packaged weights are loaded and digest-checked
    unless ``random_init``.
    """
    if name not in DINOV2_NAMES:
        raise InvalidInput(f"unknown DINOv2 model {name!r}; expected one of {list(DINOV2_NAMES)}")
    if checkpoint is None and not random_init:
        from vplab.models.embedded import embedded_weights

        packaged = embedded_weights(name)
        if packaged is not None:
            checkpoint, sha256 = packaged.path, packaged.sha256
    timm_name, extra = (
        ("vit_small_patch14_dinov2", _SMALL_ARGS[name]) if name in _SMALL_ARGS else (name, {})
    )
    kwargs: dict[str, Any] = dict(extra)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cast(
            VisionTransformer,
            timm.create_model(
                timm_name, pretrained=False, dynamic_img_size=True, num_classes=0, **kwargs
            ),
        )
    if checkpoint is not None:
        state, path = read_checkpoint(checkpoint, sha256=sha256, store=store, cache_dir=cache_dir)
        # checkpoint_filter_fn pops keys from its input: give it a shallow copy.
        state = checkpoint_filter_fn(dict(state), model)
        load_strict(model, state, name, path)
    model.vplab_name = name  # type: ignore[assignment]  # nn.Module's __setattr__ typing
    return model.eval()


def native_size(model: VisionTransformer) -> int:
    """The letterbox side to use for ``model`` when none is given (``NATIVE_SIZE``)."""
    return NATIVE_SIZE.get(getattr(model, "vplab_name", ""), DEFAULT_SIZE)


def _grid_valid(input_size: tuple[int, int], size: int, patch: int) -> torch.Tensor:
    g = size // patch
    # A cell is valid if any of its pixels is image: ceil, not floor.
    rows = -(-input_size[0] // patch)
    cols = -(-input_size[1] // patch)
    valid = torch.zeros(g, g, dtype=torch.bool)
    valid[:rows, :cols] = True
    return valid


def _patch_size(model: VisionTransformer) -> int:
    p = model.patch_embed.patch_size
    return int(p[0] if isinstance(p, (tuple, list)) else p)


@torch.no_grad()
def extract_patch_features_batch(
    model: VisionTransformer,
    images: Sequence[np.ndarray],
    size: int | None = None,
) -> list[PatchFeatures]:
    """``extract_patch_features`` for several images in one forward pass."""
    size = native_size(model) if size is None else size
    patch = _patch_size(model)
    if size % patch:
        raise InvalidInput(f"letterbox size {size} must be a multiple of the patch size {patch}")
    if not images:
        return []
    device = next(model.parameters()).device
    tensors, input_sizes = [], []
    for i, image in enumerate(images):
        check_rgb_image(image, f"images[{i}]")
        x, input_size = letterbox(image, size, IMAGENET_MEAN, IMAGENET_STD, scale=1.0 / 255.0)
        tensors.append(x)
        input_sizes.append(input_size)
    x = torch.cat(tensors).to(device)  # (B, 3, size, size)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        tokens = model.forward_features(x)  # (B, prefix + g*g, C), final norm applied
    g = size // patch
    feats = tokens[:, model.num_prefix_tokens :].float()  # drop CLS / register tokens
    feats = F.normalize(feats, dim=-1).reshape(len(images), g, g, -1).cpu()
    return [
        PatchFeatures(
            features=feats[i],
            valid=_grid_valid(input_sizes[i], size, patch),
            original_size=(int(images[i].shape[0]), int(images[i].shape[1])),
            input_size=input_sizes[i],
            size=size,
            patch_size=patch,
        )
        for i in range(len(images))
    ]


def extract_patch_features(
    model: VisionTransformer, image: np.ndarray, size: int | None = None
) -> PatchFeatures:
    """HxWx3 uint8 -> L2-normalised (Gh, Gw, C) patch features on the letterboxed image.

    Letterbox exactly like SAM (longest side to ``size``, pad bottom/right), ImageNet
    mean/std on 0-1 pixels. ``size`` None: the model's native size (896, or 224 for
    ``dinov2_mini``).
    """
    return extract_patch_features_batch(model, [image], size)[0]
