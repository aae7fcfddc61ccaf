"""Settings of the visual-prompting pipeline. Defaults are METHODS section 2; the rest are
choices METHODS leaves open (each says so)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from vplab.errors import InvalidInput


@dataclass
class VisualPromptConfig:
    # --- matching (step 1)
    matcher: Literal["soft", "prototype"] = "soft"
    temperature: float = 0.1
    bidirectional: bool = False
    bidirectional_combine: Literal["product", "sum"] = "product"  # ours; see soft_match
    score_mean: Literal["arithmetic", "geometric"] = "arithmetic"  # see soft_match (#12)
    similarity: Literal["mean", "prototype"] = "mean"  # the mask-score map; see soft_match
    prototype_threshold: float = 0.65
    # --- points (step 2)
    score_threshold: float = 0.4  # on min-max normalised soft scores
    max_points: int = 40
    bin_grid: int = 8
    num_negatives: int = 2
    point_mode: Literal["deterministic", "probabilistic"] = "deterministic"
    num_samples: int | None = None  # probabilistic: None = as many as deterministic picks
    seed: int = 0  # seeds the probabilistic mode; each predict() restarts from it
    # --- decoding (steps 3-4)
    refine: bool = False  # second pass with the mask's box + low-res logits as mask_input
    refine_multimask: bool = False  # ours: points + box + mask are unambiguous -> 1 mask
    # None: the value calibrated for the SAM weights in use (``PromptSegmenter.
    # mask_score_threshold``: the embedded sam_mini's), else the papers' 0.42.
    mask_score_threshold: float | None = None
    nms_iom: float = 0.5
    # --- features
    # Letterbox side for DINOv2. None: the model's native size - 896 for the official models
    # (64x64 grid, cell for cell on SAM's), 224 for dinov2_mini (16x16, on sam_mini's).
    dino_size: int | None = None
    patch_mask_threshold: float = 0.5
    patch_mask_antialias: bool = True  # ours; see patch_mask

    def __post_init__(self) -> None:
        if self.matcher not in ("soft", "prototype"):
            raise InvalidInput(f"matcher must be 'soft' or 'prototype', got {self.matcher!r}")
        if self.point_mode not in ("deterministic", "probabilistic"):
            raise InvalidInput(
                f"point_mode must be 'deterministic' or 'probabilistic', got {self.point_mode!r}"
            )
        if self.bidirectional_combine not in ("product", "sum"):
            raise InvalidInput(
                f"bidirectional_combine must be 'product' or 'sum', got {self.bidirectional_combine!r}"
            )
        if self.score_mean not in ("arithmetic", "geometric"):
            raise InvalidInput(
                f"score_mean must be 'arithmetic' or 'geometric', got {self.score_mean!r}"
            )
        if self.similarity not in ("mean", "prototype"):
            raise InvalidInput(f"similarity must be 'mean' or 'prototype', got {self.similarity!r}")
        if self.temperature <= 0:
            raise InvalidInput("temperature must be > 0")
        if self.max_points < 1 or self.bin_grid < 1 or self.num_negatives < 0:
            raise InvalidInput("max_points and bin_grid must be >= 1, num_negatives >= 0")
        if self.num_samples is not None and self.num_samples < 1:
            raise InvalidInput("num_samples must be >= 1 or None")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> VisualPromptConfig:
        """Build from a (partial) dict; unknown keys are an error, not silently ignored."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"unknown visual-prompt settings: {unknown}")
        return cls(**data)


PAPER_MASK_SCORE_THRESHOLD = 0.42  # METHODS section 2, for the official SAM


def mask_score_threshold(config: VisualPromptConfig, segmenter: Any) -> float:
    """The threshold a pipeline applies: the config's, else the one calibrated for the
    segmenter's SAM weights, else the papers'."""
    if config.mask_score_threshold is not None:
        return config.mask_score_threshold
    calibrated = getattr(segmenter, "mask_score_threshold", None)
    return PAPER_MASK_SCORE_THRESHOLD if calibrated is None else float(calibrated)
