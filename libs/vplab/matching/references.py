"""Reference shots -> per-class masked patch features (computed once, reused per target)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vplab.errors import InvalidInput
from vplab.matching.geometry import LetterboxGrid
from vplab.matching.patch_mask import patch_mask


@dataclass
class ClassReference:
    """One class over all K shots.

    features: (m, C) masked reference patches, shots concatenated (METHODS section 1).
    all_features: (M, C) every valid reference patch, the masked ones first (same order as
        ``features``), then the rest: the denominator of the bidirectional backward term.
    shots: indices of the shots that show the class.
    """

    class_id: int
    features: torch.Tensor
    all_features: torch.Tensor
    shots: list[int]


def _as_array(mask: Any, i: int) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise InvalidInput(f"references[{i}]: mask must be an array, got {type(mask).__name__}")
    if mask.ndim != 2:
        raise InvalidInput(f"references[{i}]: mask must be 2-D (H, W), got shape {mask.shape}")
    if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
        raise InvalidInput(
            f"references[{i}]: mask must be bool (binary) or integer (label map), got {mask.dtype}"
        )
    return mask


def resolve_classes(masks: Sequence[np.ndarray], classes: Sequence[int] | None) -> list[int]:
    """Class ids to segment. Default: every non-zero value of the label maps (1 for binary
    masks). 0 is background and cannot be a class."""
    if classes is None:
        ids: set[int] = set()
        for m in masks:
            ids.update(int(v) for v in np.unique(m) if v != 0)
        if not ids:
            raise InvalidInput("reference mask is empty / too small for the patch grid")
        return sorted(ids)
    out = [int(c) for c in classes]
    if not out:
        raise InvalidInput("classes must not be empty")
    if any(c <= 0 for c in out):
        raise InvalidInput("class ids must be positive integers (0 is background)")
    if len(set(out)) != len(out):
        raise InvalidInput(f"duplicate class ids in {out}")
    return out


def class_mask(mask: np.ndarray, class_id: int, classes: Sequence[int]) -> np.ndarray:
    """Binary mask of ``class_id`` in one shot. A bool mask is the single class's mask."""
    if mask.dtype == bool:
        if len(classes) != 1:
            raise InvalidInput(
                "a binary reference mask can only be used with a single class; pass label maps"
            )
        return mask
    return mask == class_id


def build_class_references(
    features: Sequence[Any],
    masks: Sequence[Any],
    classes: Sequence[int] | None = None,
    threshold: float = 0.5,
    antialias: bool = True,
) -> list[ClassReference]:
    """``features``: one ``PatchFeatures`` per shot; ``masks``: matching (H, W) bool masks or
    integer label maps in original pixels. A shot where a class has no pixel is skipped for
    that class; a class whose pixels all vanish on the patch grid is an InvalidInput."""
    if len(features) != len(masks) or not features:
        raise InvalidInput("need at least one reference, and one mask per reference image")
    arrays = [_as_array(m, i) for i, m in enumerate(masks)]
    ids = resolve_classes(arrays, classes)
    refs: list[ClassReference] = []
    for cid in ids:
        fg, bg, shots = [], [], []
        for i, (pf, m) in enumerate(zip(features, arrays)):
            binary = class_mask(m, cid, ids)
            if not binary.any():
                continue
            grid = LetterboxGrid.from_features(pf)
            try:
                pm = patch_mask(binary, grid, threshold, antialias) & pf.valid
            except InvalidInput as e:
                raise InvalidInput(f"references[{i}], class {cid}: {e.message}") from e
            if not bool(pm.any()):
                raise InvalidInput(
                    f"references[{i}], class {cid}: reference mask is empty / too small for the patch grid"
                )
            fg.append(pf.features[pm])  # (m_i, C)
            bg.append(pf.features[pf.valid & ~pm])
            shots.append(i)
        if not fg:
            raise InvalidInput(
                f"class {cid}: reference mask is empty / too small for the patch grid"
            )
        f = torch.cat(fg)
        refs.append(ClassReference(cid, f, torch.cat([f, *bg]), shots))
    return refs
