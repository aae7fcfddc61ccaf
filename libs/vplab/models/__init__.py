"""Model construction and loading: SAM (segment_anything), DINOv2 (timm), devices."""

from vplab.models.checkpoint import (
    file_sha256,
    load_state_dict_file,
    load_strict,
    read_checkpoint,
    resolve_checkpoint,
)
from vplab.models.device import configure_compute, configure_threads, resolve_device
from vplab.models.dinov2 import (
    DINOV2_NAMES,
    PatchFeatures,
    build_dinov2,
    extract_patch_features,
    extract_patch_features_batch,
)
from vplab.models.sam import SAM_NAMES, SamConfig, build_sam, sam_config

__all__ = [
    "DINOV2_NAMES",
    "SAM_NAMES",
    "PatchFeatures",
    "SamConfig",
    "build_dinov2",
    "build_sam",
    "configure_compute",
    "configure_threads",
    "extract_patch_features",
    "extract_patch_features_batch",
    "file_sha256",
    "load_state_dict_file",
    "load_strict",
    "read_checkpoint",
    "resolve_checkpoint",
    "resolve_device",
    "sam_config",
]
