"""The models one replica serves, built once from the settings.

``--demo`` / ``VPLAB_DEMO=1`` uses the embedded ``sam_mini`` / ``dinov2_mini`` (pretrained
on miniworld, packaged, digest-pinned); otherwise the configured official checkpoints
(local paths or object-store keys, verified by sha256).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import torch
from segment_anything.modeling import Sam
from timm.models.vision_transformer import VisionTransformer

from vplab.models import build_dinov2, resolve_device
from vplab.models.base import BaseSam, resolve_base_sam, state_sha256
from vplab.models.checkpoint import file_sha256, resolve_checkpoint
from vplab.models.embedded import EMBEDDED
from vplab.settings import Settings
from vplab.storage import ArtifactStore

DEMO_SAM = "sam_mini"  # the embedded defaults (docs/MINIWORLD.md)
DEMO_DINO = "dinov2_mini"


def deployed_sam_name(settings: Settings) -> str:
    """The architecture the services run (and tune): the embedded one under ``demo``."""
    return DEMO_SAM if settings.demo else settings.sam_model


@dataclass
class ModelRuntime:
    settings: Settings
    store: ArtifactStore

    @cached_property
    def device(self) -> torch.device:
        return resolve_device(self.settings.device)

    @cached_property
    def base(self) -> BaseSam:
        s = self.settings
        if s.demo:
            return resolve_base_sam(DEMO_SAM)
        if s.random_weights:  # benchmarks: the real architecture, seeded random weights
            return resolve_base_sam(s.sam_model)
        if not s.sam_checkpoint:
            from vplab.errors import Unavailable

            raise Unavailable(
                "no SAM checkpoint configured: set VPLAB_SAM_CHECKPOINT (or run with --demo)"
            )
        return resolve_base_sam(s.sam_model, s.sam_checkpoint, s.sam_sha256, self.store)

    @cached_property
    def sam(self) -> Sam:
        return self.base.build(self.store).to(self.device).eval()

    @cached_property
    def sam_encoder_id(self) -> str:
        """Names the encoder weights: embeddings of different weights never mix."""
        return f"sam.{self.base.name}.{self.base.sha256[:16]}"

    @cached_property
    def dino_name(self) -> str:
        return DEMO_DINO if self.settings.demo else self.settings.dino_model

    @cached_property
    def dino(self) -> VisionTransformer:
        s = self.settings
        if s.demo:
            return build_dinov2(DEMO_DINO).to(self.device)
        if s.random_weights:
            return build_dinov2(s.dino_model).to(self.device)
        return build_dinov2(s.dino_model, self._dino_checkpoint(), s.dino_sha256, self.store).to(
            self.device
        )

    def _dino_checkpoint(self) -> str:
        """The configured DINOv2 checkpoint, or ``Unavailable`` when there is none."""
        if not self.settings.dino_checkpoint:
            from vplab.errors import Unavailable

            raise Unavailable(
                "no DINOv2 checkpoint configured: set VPLAB_DINO_CHECKPOINT (or --demo)"
            )
        return self.settings.dino_checkpoint

    @cached_property
    def dino_encoder_id(self) -> str:
        s = self.settings
        if s.demo:
            digest = EMBEDDED[DEMO_DINO].sha256  # verified when the weights were loaded
        elif s.random_weights:
            digest = state_sha256(self.dino)
        else:
            path, _ = resolve_checkpoint(self._dino_checkpoint(), self.store, s.dino_sha256)
            digest = file_sha256(path)
        return f"dinov2.{self.dino_name}.{digest[:16]}"


def adapter_encoder_id(base_encoder_id: str, adapter_sha256: str) -> str:
    """Encoder id of a model whose encoder is tuned (PTSAM deep prompts, LoRA...)."""
    return f"{base_encoder_id}.a{adapter_sha256[:16]}"


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
