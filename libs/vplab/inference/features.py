"""Embeddings of tenant images, cached per tenant: in-replica LRU, then the object store.

The cache is per tenant (``tenants/{t}/cache/{encoder_id}/{sha}.safetensors``): a shared
cache would let one tenant learn by timing whether another uploaded the same image.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vplab.blobs import safetensors_metadata
from vplab.errors import InvalidInput, NotFound, VPLabError
from vplab.images import decode_image
from vplab.inference.lru import ByteLRU
from vplab.inference.runtime import ModelRuntime
from vplab.models import PatchFeatures, extract_patch_features_batch
from vplab.segmentation import PromptSegmenter
from vplab.segmentation.embedding import ImageEmbedding
from vplab.segmentation.predictor import BASE_OUTPUT
from vplab.segmentation.tiling import TiledEmbedding, load_sam_embedding, needs_tiling, tile_grid
from vplab.storage import keys

ENCODERS = ("sam", "dinov2")


@dataclass
class EmbedInfo:
    image_id: str
    encoder_id: str
    cache_key: str
    cache_hit: bool
    shape: tuple[int, ...]
    dtype: str
    original_size: tuple[int, int]


@dataclass
class _Req:
    tenant: str
    image_id: str
    encoder: str
    encoder_id: str
    key: str


class FeatureEngine:
    def __init__(
        self,
        runtime: ModelRuntime,
        lru_bytes: int = 512 * 1024**2,
        on_lookup: Callable[[str, bool], None] | None = None,
    ):
        self.rt = runtime
        self.store = runtime.store
        self.lru: ByteLRU[object] = ByteLRU(lru_bytes)
        self.hits = 0
        self.misses = 0
        self.on_lookup = on_lookup or (lambda encoder, hit: None)  # (encoder, hit): for metrics

    @property
    def segmenter(self) -> PromptSegmenter:
        if not hasattr(self, "_segmenter"):
            self._segmenter = self.segmenter_for(self.rt.sam)
        return self._segmenter

    def segmenter_for(self, sam, output: str = BASE_OUTPUT) -> PromptSegmenter:
        """A segmenter of ``sam`` that embeds as the settings say (tiling large images)."""
        s = self.rt.settings
        return PromptSegmenter(
            sam,
            self.rt.device,
            output=output,
            tile_large_images=s.tile_large_images,
            tile_halo=s.tile_halo or None,
        )

    # -- images ----------------------------------------------------------------------
    def image(self, tenant: str, image_id: str) -> np.ndarray:
        key = keys.image(tenant, keys.check_sha256(image_id, "image_id"))
        try:
            data = self.store.get_bytes(key)
        except NotFound:
            raise NotFound(f"image {image_id} not found") from None
        s = self.rt.settings
        return decode_image(data, max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels)

    # -- cached features --------------------------------------------------------------
    def _request(
        self, tenant: str, image_id: str, encoder: str, encoder_id: str | None = None
    ) -> _Req:
        encoder = encoder or "sam"
        if encoder not in ENCODERS:
            raise InvalidInput(f"unknown encoder {encoder!r}; expected one of {list(ENCODERS)}")
        keys.check_sha256(image_id, "image_id")
        encoder_id = encoder_id or (
            self.rt.sam_encoder_id if encoder == "sam" else self.rt.dino_encoder_id
        )
        return _Req(
            tenant, image_id, encoder, encoder_id, keys.embedding(tenant, encoder_id, image_id)
        )

    def _cached(self, req: _Req) -> object | None:
        value = self.lru.get(req.key)
        if value is None:
            try:
                data = self.store.get_bytes(req.key)
            except NotFound:
                return None
            value = (
                load_sam_embedding(data)
                if req.encoder == "sam"
                else patch_features_from_bytes(data)
            )
            if req.encoder == "sam" and not self._as_configured(value):
                return None  # embedded under other tiling settings: embed it again
            self.lru.put(req.key, value, _nbytes(value))
        return value

    def _as_configured(self, value) -> bool:
        """Whether a cached SAM embedding is what the tiling settings give its image."""
        seg = self.segmenter
        H, W = value.original_size
        if not (seg.tile_large_images and needs_tiling(H, W, seg.img_size)):
            return isinstance(value, ImageEmbedding)
        grid = tile_grid(H, W, seg.img_size, seg.tile_halo)
        return isinstance(value, TiledEmbedding) and value.tiles == grid

    def precompute(self, tenant: str, image_ids: list[str], encoder: str) -> list[bool | str]:
        """Fill the cache for these images (one encoder batch of the misses): per image,
        whether it was cached already, or the message of its error."""
        results = self.embed_many([(tenant, image_id, encoder) for image_id in image_ids])
        return [r.message if isinstance(r, VPLabError) else r[1].cache_hit for r in results]

    def embed_many(
        self, requests: list[tuple[str, str, str]], sam=None, encoder_id: str | None = None
    ) -> list[tuple[object, EmbedInfo] | VPLabError]:
        """Embed ``(tenant, image_id, encoder)`` requests, misses in one encoder batch each.

        ``sam``/``encoder_id`` override the base SAM (a model with a tuned encoder). Each
        result is ``(value, info)`` or the error for that request alone.
        """
        results: list[tuple[object, EmbedInfo] | VPLabError | None] = [None] * len(requests)
        misses: dict[str, list[tuple[int, _Req, np.ndarray]]] = {"sam": [], "dinov2": []}
        for i, (tenant, image_id, encoder) in enumerate(requests):
            try:
                req = self._request(
                    tenant, image_id, encoder, encoder_id if encoder == "sam" else None
                )
                value = self._cached(req)
                if value is not None:
                    self.hits += 1
                    self.on_lookup(req.encoder, True)
                    results[i] = (value, self._info(req, value, True))
                else:
                    misses[req.encoder].append((i, req, self.image(tenant, image_id)))
            except VPLabError as e:
                results[i] = e
        if misses["sam"]:
            segmenter = self.segmenter if sam is None else self.segmenter_for(sam)
            embeddings = segmenter.embed_images([m[2] for m in misses["sam"]])
            self._store_misses(
                misses["sam"], embeddings, [e.to_bytes() for e in embeddings], results
            )
        if misses["dinov2"]:
            patches = extract_patch_features_batch(self.rt.dino, [m[2] for m in misses["dinov2"]])
            self._store_misses(
                misses["dinov2"], patches, [patch_features_to_bytes(p) for p in patches], results
            )
        done: list[tuple[object, EmbedInfo] | VPLabError] = []
        for result in results:
            if result is None:  # every request is a hit, an error or a stored miss
                raise RuntimeError("embed_many left a request without a result")
            done.append(result)
        return done

    def _store_misses(self, misses, values, blobs, results) -> None:
        for (i, req, _), value, blob in zip(misses, values, blobs):
            self.misses += 1
            self.on_lookup(req.encoder, False)
            self.store.put_bytes(req.key, blob)
            # Serve what was stored (bf16-rounded), so a hit and a miss give the same result.
            value = (
                load_sam_embedding(blob)
                if req.encoder == "sam"
                else patch_features_from_bytes(blob)
            )
            self.lru.put(req.key, value, _nbytes(value))
            results[i] = (value, self._info(req, value, False))

    def _one(self, tenant: str, image_id: str, encoder: str, sam=None, encoder_id=None):
        result = self.embed_many([(tenant, image_id, encoder)], sam=sam, encoder_id=encoder_id)[0]
        if isinstance(result, VPLabError):
            raise result
        return result

    def sam_embedding(
        self, tenant: str, image_id: str, sam=None, encoder_id: str | None = None
    ) -> ImageEmbedding | TiledEmbedding:
        return self._one(tenant, image_id, "sam", sam, encoder_id)[0]

    def dino_features(self, tenant: str, image_id: str) -> PatchFeatures:
        return self._one(tenant, image_id, "dinov2")[0]

    def embed(self, tenant: str, image_id: str, encoder: str = "sam") -> EmbedInfo:
        return self._one(tenant, image_id, encoder)[1]

    @staticmethod
    def _info(req: _Req, value, hit: bool) -> EmbedInfo:
        shape = value.shape if isinstance(value, TiledEmbedding) else value.features.shape
        return EmbedInfo(
            req.image_id,
            req.encoder_id,
            req.key,
            hit,
            tuple(shape),
            "bfloat16",
            tuple(value.original_size),
        )


def _nbytes(value) -> int:
    if isinstance(value, TiledEmbedding):  # without concatenating its tiles
        return value.nbytes
    return value.features.numel() * value.features.element_size()


# -- DINOv2 patch features cache format --------------------------------------------------
_DINO_FORMAT = "vplab.dinov2-features/1"


def patch_features_to_bytes(pf: PatchFeatures) -> bytes:
    meta = {
        "format": _DINO_FORMAT,
        "original_size": json.dumps(list(pf.original_size)),
        "input_size": json.dumps(list(pf.input_size)),
        "size": str(pf.size),
        "patch_size": str(pf.patch_size),
    }
    tensors = {
        "features": pf.features.to(torch.bfloat16).contiguous(),
        "valid": pf.valid.to(torch.uint8),
    }
    return st_save(tensors, metadata=meta)


def patch_features_from_bytes(data: bytes) -> PatchFeatures:
    meta = safetensors_metadata(data)
    if meta.get("format") != _DINO_FORMAT:
        raise InvalidInput("cached DINOv2 features have an unknown format")
    t = st_load(data)
    features = torch.nn.functional.normalize(
        t["features"].float(), dim=-1
    )  # renormalise after bf16
    return PatchFeatures(
        features=features,
        valid=t["valid"].bool(),
        original_size=tuple(json.loads(meta["original_size"])),
        input_size=tuple(json.loads(meta["input_size"])),
        size=int(meta["size"]),
        patch_size=int(meta["patch_size"]),
    )
