"""The visual-prompting pipeline: reference image(s) + mask(s) -> masks on target images.

DINOv2 patch features of the references are computed once (``set_references``); each
target costs one DINOv2 pass, one SAM encoder pass (both skippable when cached), one
match + point selection and one batched decoder call per class (METHODS section 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vplab.errors import InvalidInput
from vplab.matching.config import VisualPromptConfig, mask_score_threshold
from vplab.matching.decoding import ClassPrediction, decode_class
from vplab.matching.geometry import LetterboxGrid
from vplab.matching.maps import MatchMaps
from vplab.matching.points import select_points
from vplab.matching.prototype import prototype_match
from vplab.matching.references import ClassReference, build_class_references
from vplab.matching.soft_matcher import soft_match


@dataclass
class VisualPromptResult:
    """Prediction on one target image (tensors on the CPU).

    classes: class id -> ClassPrediction (its union mask, points used with labels,
        surviving masks and their scores).
    label_map: (H, W) int64; 0 = background, else the class whose best surviving mask
        covering the pixel scores highest (per-pixel argmax of class scores).
    """

    classes: dict[int, ClassPrediction]
    label_map: torch.Tensor

    @property
    def masks(self) -> dict[int, torch.Tensor]:
        """class id -> (H, W) bool union mask (classes may overlap; ``label_map`` does not)."""
        return {c: p.mask for c, p in self.classes.items()}

    @property
    def scores(self) -> dict[int, torch.Tensor]:
        """class id -> (K,) scores of the surviving masks."""
        return {c: p.scores for c, p in self.classes.items()}


def label_map_from(preds: Sequence[ClassPrediction], hw: tuple[int, int]) -> torch.Tensor:
    """Per-pixel argmax over classes of the best surviving mask score covering the pixel."""
    h, w = hw
    if not preds:
        return torch.zeros(h, w, dtype=torch.long)
    best = torch.full((len(preds), h, w), float("-inf"))
    for k, p in enumerate(preds):
        for m, s in zip(p.masks, p.scores):
            best[k] = torch.where(m, torch.maximum(best[k], s), best[k])
    top, arg = best.max(dim=0)
    ids = torch.tensor([p.class_id for p in preds], dtype=torch.long)
    return torch.where(torch.isfinite(top), ids[arg], torch.zeros_like(arg))


class VisualPrompter:
    """Few-shot segmentation by visual prompting.

    segmenter: ``vplab.segmentation.PromptSegmenter`` (a tuned decoder plugs in here).
    dino_model: DINOv2 from ``vplab.models.build_dinov2``; may be None when every call
        passes precomputed ``PatchFeatures``.
    """

    def __init__(
        self, segmenter: Any, dino_model: Any = None, config: VisualPromptConfig | None = None
    ):
        self.segmenter = segmenter
        self.dino = dino_model
        self.config = config or VisualPromptConfig()
        self.references: list[ClassReference] = []

    # --- features ---------------------------------------------------------------------

    def extract_features(self, images: Sequence[np.ndarray]) -> list[Any]:
        """DINOv2 ``PatchFeatures`` of ``images`` at ``config.dino_size`` (one batch)."""
        if self.dino is None:
            raise InvalidInput("no DINOv2 model: pass precomputed patch features")
        from vplab.models import extract_patch_features_batch  # heavy import, only when used

        return extract_patch_features_batch(self.dino, list(images), self.config.dino_size)

    @property
    def _match_device(self) -> torch.device:
        if self.dino is not None:
            return next(self.dino.parameters()).device
        return torch.device("cpu")

    # --- references -------------------------------------------------------------------

    def set_references(
        self,
        references: Sequence[tuple[np.ndarray | None, Any]],
        classes: Sequence[int] | None = None,
        features: Sequence[Any] | None = None,
    ) -> list[int]:
        """Set the K reference shots: ``(image, mask)`` pairs, the mask either (H, W) bool
        (one class) or an integer label map (0 = background). ``classes``: the class ids to
        segment (default: every non-zero label). ``features``: precomputed PatchFeatures per
        shot (then images may be None). Returns the class ids, in order."""
        if not references:
            raise InvalidInput("need at least one reference (image, mask) pair")
        masks = [m for _, m in references]
        if features is None:
            images: list[np.ndarray] = []
            for img, _ in references:
                if img is None:
                    raise InvalidInput("reference image missing (or pass precomputed features)")
                images.append(img)
            features = self.extract_features(images)
        elif len(features) != len(references):
            raise InvalidInput("need one features entry per reference")
        cfg = self.config
        refs = build_class_references(
            features, masks, classes, cfg.patch_mask_threshold, cfg.patch_mask_antialias
        )
        dev = self._match_device
        for r in refs:
            r.features, r.all_features = r.features.to(dev), r.all_features.to(dev)
        self.references = refs
        return [r.class_id for r in refs]

    @property
    def classes(self) -> list[int]:
        return [r.class_id for r in self.references]

    # --- targets ----------------------------------------------------------------------

    def match(self, ref: ClassReference, target_features: Any) -> MatchMaps:
        """Step 1 for one class: score and similarity maps on the target grid."""
        dev = self._match_device
        tf, valid = target_features.features.to(dev), target_features.valid.to(dev)
        cfg = self.config
        if cfg.matcher == "prototype":
            maps = prototype_match(ref.features, tf, valid)
        else:
            maps = soft_match(
                ref.features,
                tf,
                valid,
                cfg.temperature,
                cfg.bidirectional,
                ref.all_features if cfg.bidirectional else None,
                cfg.bidirectional_combine,
                cfg.score_mean,
                cfg.similarity,
            )
        return MatchMaps(maps.scores.cpu(), maps.similarity.cpu())

    def predict(
        self,
        target_image: np.ndarray | None = None,
        target_embedding: Any = None,
        target_features: Any = None,
        seed: int | None = None,
    ) -> VisualPromptResult:
        """Segment every reference class in one target.

        target_embedding: cached SAM ``ImageEmbedding``; target_features: cached DINOv2
        ``PatchFeatures``. The image is only needed for what is not given.
        seed: overrides ``config.seed`` for the probabilistic point mode; the same seed on
        the same inputs gives the same result.
        """
        if not self.references:
            raise InvalidInput("set_references must be called before predict")
        if target_embedding is None or target_features is None:
            if target_image is None:
                raise InvalidInput(
                    "target image missing (or pass both its embedding and its features)"
                )
            if target_features is None:
                target_features = self.extract_features([target_image])[0]
            if target_embedding is None:
                target_embedding = self.segmenter.embed_images([target_image])[0]
        h, w = (int(v) for v in target_embedding.original_size)
        hw = (h, w)
        if tuple(int(v) for v in target_features.original_size) != hw:
            raise InvalidInput(
                f"target features are for a {tuple(target_features.original_size)} image but the "
                f"embedding is for {hw}: they must come from the same image"
            )
        cfg = self.config
        grid = LetterboxGrid.from_features(target_features)
        valid = target_features.valid.cpu()
        gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
        preds: dict[int, ClassPrediction] = {}
        for ref in self.references:
            maps = self.match(ref, target_features)
            soft = cfg.matcher == "soft"
            points = select_points(
                maps.scores,
                maps.similarity,
                valid,
                grid,
                threshold=cfg.score_threshold if soft else cfg.prototype_threshold,
                normalise=soft,
                max_points=cfg.max_points,
                bin_grid=cfg.bin_grid,
                num_negatives=cfg.num_negatives,
                mode=cfg.point_mode,
                num_samples=cfg.num_samples,
                generator=gen,
            )
            similarity_img = grid.upsample_to_image(maps.similarity, valid)  # (H, W)
            preds[ref.class_id] = decode_class(
                self.segmenter,
                target_embedding,
                points,
                similarity_img,
                ref.class_id,
                refine=cfg.refine,
                refine_multimask=cfg.refine_multimask,
                score_threshold=mask_score_threshold(cfg, self.segmenter),
                nms_threshold=cfg.nms_iom,
            )
        return VisualPromptResult(preds, label_map_from(list(preds.values()), hw))
