"""The base model a run starts from, with the identity adapters are pinned to.

An adapter records its base's ``name`` and ``sha256``; loading it onto any other base is
an error. For official checkpoints the digest is the file's sha256; for the seeded tiny
models it is the sha256 of their (deterministic) serialized state dict.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save as st_save
from segment_anything.modeling import Sam

from vplab.models.checkpoint import file_sha256, resolve_checkpoint
from vplab.models.sam import TINY_SEED, build_sam

if TYPE_CHECKING:
    from vplab.storage import ArtifactStore


@dataclass
class BaseSam:
    name: str  # "vit_b" | "vit_l" | "vit_h" | "sam_tiny" | "sam_mini"
    sha256: str
    checkpoint: str | None  # the reference it was loaded from (None: seeded tiny model)
    seed: int = TINY_SEED
    local_path: str | None = None  # the checkpoint file, already verified against sha256

    def ref(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256}

    def build(self, store: ArtifactStore | None = None) -> Sam:
        """A fresh copy of the base model (each training run mutates its own)."""
        if self.checkpoint is None:
            return build_sam(self.name, seed=self.seed)
        if self.local_path is not None:
            # Hashed once in resolve_base_sam: re-hashing up to 2.5 GB per training job is waste.
            return build_sam(self.name, Path(self.local_path))
        return build_sam(self.name, self.checkpoint, sha256=self.sha256, store=store)


def state_sha256(sam: Sam) -> str:
    state = {k: v.contiguous() for k, v in sorted(sam.state_dict().items())}
    return hashlib.sha256(st_save(state)).hexdigest()


def resolve_base_sam(
    name: str,
    checkpoint: str | Path | None = None,
    sha256: str | None = None,
    store: ArtifactStore | None = None,
    seed: int = TINY_SEED,
) -> BaseSam:
    """Identify a base model without keeping it: the digest is verified or computed.

    ``sam_mini`` without a checkpoint is the packaged, digest-pinned embedded model.
    """
    if checkpoint is None:
        from vplab.models.embedded import embedded_weights

        packaged = embedded_weights(name)
        if packaged is not None:
            checkpoint, sha256 = packaged.path, packaged.sha256
    if checkpoint is None:
        return BaseSam(name, state_sha256(build_sam(name, seed=seed)), None, seed)
    path, expected = resolve_checkpoint(checkpoint, store=store, sha256=sha256)
    digest = file_sha256(path)
    if expected is not None and digest != expected.lower():
        from vplab.errors import CheckpointError

        raise CheckpointError(
            f"checkpoint {path}: sha256 mismatch, expected {expected} but the file has {digest}"
        )
    return BaseSam(name, digest, str(checkpoint), local_path=str(path))
