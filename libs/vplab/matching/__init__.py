"""Visual prompting: reference image(s) + mask(s) -> point prompts -> SAM masks on targets.

METHODS section 2. Pure feature-map functions (no models) live in ``geometry``,
``patch_mask``, ``soft_matcher``, ``prototype`` and ``points``; ``pipeline`` wires them to
a DINOv2 feature extractor and a SAM prompt segmenter.
"""

from vplab.matching.config import VisualPromptConfig
from vplab.matching.decoding import ClassPrediction, decode_class
from vplab.matching.geometry import LetterboxGrid
from vplab.matching.maps import MatchMaps
from vplab.matching.nms import mask_scores, nms_iom
from vplab.matching.patch_mask import masked_features, patch_mask
from vplab.matching.pipeline import VisualPrompter, VisualPromptResult, label_map_from
from vplab.matching.points import PointPrompts, normalise_scores, select_points
from vplab.matching.prototype import prototype, prototype_match
from vplab.matching.references import ClassReference, build_class_references
from vplab.matching.soft_matcher import soft_match

__all__ = [
    "ClassPrediction",
    "ClassReference",
    "LetterboxGrid",
    "MatchMaps",
    "PointPrompts",
    "VisualPromptConfig",
    "VisualPromptResult",
    "VisualPrompter",
    "build_class_references",
    "decode_class",
    "label_map_from",
    "mask_scores",
    "masked_features",
    "nms_iom",
    "normalise_scores",
    "patch_mask",
    "prototype",
    "prototype_match",
    "select_points",
    "soft_match",
]
