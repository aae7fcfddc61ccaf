"""Prompt segmentation, visual prompting and prompt-free segmentation for tenants.

Tuned models are loaded per (tenant, model_id) from the tenant's own prefix, so another
tenant's model id is simply not found. Methods that leave the image encoder frozen share
the replica's base encoder (and its cached embeddings); encoder-tuned models get their
own encoder copy and their own embedding cache namespace.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from segment_anything.modeling import Sam

from vplab.errors import InvalidInput
from vplab.inference.features import FeatureEngine
from vplab.inference.runtime import adapter_encoder_id
from vplab.masks import decode_rle, encode_rle
from vplab.matching import VisualPromptConfig, VisualPrompter
from vplab.peft import get_method
from vplab.peft.adapter_io import adapter_output
from vplab.peft.ptsam import ptsam_decode
from vplab.segmentation import PromptSegmenter
from vplab.segmentation.mask_input import mask_to_mask_input
from vplab.segmentation.transforms import postprocess_masks
from vplab.storage import keys
from vplab.tenancy.limits import RequestLimits
from vplab.tuned import load_tuned_model


@dataclass
class TunedModel:
    model_id: str
    method: str
    sam: Sam
    segmenter: PromptSegmenter
    encoder_id: str  # embeddings namespace: the base's unless the encoder is tuned
    encoder_tuned: bool
    prompt_free: bool
    output: str  # the decoder output it was trained on (adapter config)


@dataclass
class Prompt:
    points: list[tuple[float, float, int]]
    box: tuple[float, float, float, float] | None = None
    mask_input: dict[str, Any] | None = None  # COCO RLE of a previous mask, image size
    multimask: bool = False


class SegmentationEngine:
    """The ML side of the segmentation service. It keeps no tuned models: whoever serves
    it caches them (Ray Serve's multiplexer, sized by ``max_models_per_replica``)."""

    def __init__(self, features: FeatureEngine):
        self.features = features
        self.rt = features.rt
        self.store = features.store
        self.settings = self.rt.settings
        self.limits = RequestLimits(self.settings)

    # -- models ------------------------------------------------------------------------
    def model(self, tenant: str, model_id: str | None) -> TunedModel | None:
        """None for the base model (empty id); NotFound for unknown or another tenant's."""
        if not model_id:
            return None
        return self.load_model(tenant, keys.check_id(model_id, "model_id"))

    def load_model(self, tenant: str, model_id: str) -> TunedModel:
        from vplab.tuned import read_tuned_config

        cfg = read_tuned_config(self.store, tenant, model_id)
        spec = get_method(cfg["method"])
        base = self.rt.sam
        encoder_tuned = spec.encoder_mode != "frozen"
        # Share the frozen base encoder; copy what the adapter changes.
        fresh = Sam(
            image_encoder=copy.deepcopy(base.image_encoder)
            if encoder_tuned
            else base.image_encoder,
            prompt_encoder=copy.deepcopy(base.prompt_encoder),
            mask_decoder=copy.deepcopy(base.mask_decoder),
            pixel_mean=base.pixel_mean.flatten().tolist(),
            pixel_std=base.pixel_std.flatten().tolist(),
        ).to(self.rt.device)
        sam, _ = load_tuned_model(self.store, tenant, model_id, fresh, self.rt.base.sha256)
        sam.eval()
        encoder_id = self.rt.sam_encoder_id
        if encoder_tuned:
            digest = hashlib.sha256(
                self.store.get_bytes(keys.model_adapter(tenant, model_id))
            ).hexdigest()
            encoder_id = adapter_encoder_id(encoder_id, digest)
        output = adapter_output(cfg)
        return TunedModel(
            model_id,
            cfg["method"],
            sam,
            PromptSegmenter(sam, self.rt.device, output=output),
            encoder_id,
            encoder_tuned,
            spec.prompt_free,
            output,
        )

    def _embedding(self, tenant: str, image_id: str, model: TunedModel | None):
        if model is None or not model.encoder_tuned:
            return self.features.sam_embedding(tenant, image_id)
        return self.features.sam_embedding(
            tenant, image_id, sam=model.sam, encoder_id=model.encoder_id
        )

    # -- prompt segmentation -------------------------------------------------------------
    def segment_prompt(
        self, tenant: str, image_id: str, prompt: Prompt, model: TunedModel | None = None
    ):
        """-> (list of (rle, score) best first, (H, W)). ``model``: from ``model()`` (None = base)."""
        self.limits.check_points(len(prompt.points))
        if not prompt.points and prompt.box is None and prompt.mask_input is None:
            raise InvalidInput("give at least one point, a box or a mask_input")
        if model is not None and model.prompt_free:
            raise InvalidInput(
                f"model {model.model_id} ({model.method}) is prompt-free: use AutoSegment"
            )
        emb = self._embedding(tenant, image_id, model)
        segmenter = model.segmenter if model else self.features.segmenter
        H, W = emb.original_size
        for _x, _y, label in prompt.points:
            if label not in (0, 1):
                raise InvalidInput(f"point label {label} must be 1 (object) or 0 (background)")
        coords = np.array([[p[:2] for p in prompt.points]], np.float32) if prompt.points else None
        labels = np.array([[p[2] for p in prompt.points]], np.int64) if prompt.points else None
        boxes = np.array([prompt.box], np.float32) if prompt.box is not None else None
        mask_input = None
        if prompt.mask_input is not None:
            prev = decode_rle(prompt.mask_input)
            if prev.shape != (H, W):
                raise InvalidInput(
                    f"mask_input is {prev.shape[1]}x{prev.shape[0]} but the image is {W}x{H}"
                )
            low = segmenter.mask_input_size[0]
            mask_input = mask_to_mask_input(prev, segmenter.img_size, low).numpy()
        with torch.no_grad():
            result = segmenter.decode(
                emb,
                coords,
                labels,
                boxes=boxes,
                mask_input=mask_input,
                multimask_output=prompt.multimask,
            )
        scores = result.iou_predictions[0].float().cpu()
        order = torch.argsort(scores, descending=True).tolist()
        masks = _column_major(result.masks[0])
        return [(encode_rle(masks[i]), float(scores[i])) for i in order], (H, W)

    # -- prompt-free (PTSAM) ---------------------------------------------------------------
    def auto_segment(self, tenant: str, image_id: str, model: TunedModel | None):
        """-> (rle, score): score = mean foreground probability inside the mask."""
        if model is None:
            raise InvalidInput("AutoSegment needs the model_id of a prompt-free (PTSAM) model")
        if not model.prompt_free:
            raise InvalidInput(
                f"model {model.model_id} ({model.method}) needs prompts: use SegmentPrompt"
            )
        emb = self._embedding(tenant, image_id, model).to(self.rt.device)
        with torch.no_grad():
            logits = ptsam_decode(model.sam, emb.features, model.output)
            logits = postprocess_masks(
                logits.float(), emb.input_size, emb.original_size, model.segmenter.img_size
            )
        prob = torch.sigmoid(logits[0, 0]).cpu()
        mask = (logits[0, 0] > 0).cpu()
        score = float(prob[mask].mean()) if mask.any() else 0.0
        return encode_rle(_column_major(mask)), score

    # -- visual prompting ----------------------------------------------------------------
    def visual_prompt(
        self,
        tenant: str,
        references: list[tuple[str, dict[str, Any]]],
        targets: list[str],
        model: TunedModel | None = None,
        matcher: str = "soft",
        seed: int = 0,
    ) -> Iterator[tuple[int, str, dict[str, Any], float, list[tuple[float, float, int]]]]:
        """Validate everything first (errors before any result), then yield one result per target."""
        if not references:
            raise InvalidInput("give at least one reference image with its mask")
        if not targets:
            raise InvalidInput("give at least one target image")
        self.limits.check_references(len(references))
        self.limits.check_targets(len(targets))
        matcher_mode: Literal["soft", "prototype"]
        if matcher in ("soft", ""):
            matcher_mode = "soft"
        elif matcher == "prototype":
            matcher_mode = "prototype"
        else:
            raise InvalidInput(f"matcher must be 'soft' or 'prototype', got {matcher!r}")
        for image_id in targets:
            keys.check_sha256(image_id, "target image_id")
            if not self.store.exists(keys.image(tenant, image_id)):
                from vplab.errors import NotFound

                raise NotFound(f"image {image_id} not found")
        if model is not None and model.prompt_free:
            raise InvalidInput(
                f"model {model.model_id} ({model.method}) is prompt-free: use AutoSegment"
            )
        ref_pairs, ref_features = [], []
        for image_id, rle in references:
            feats = self.features.dino_features(tenant, image_id)
            mask = decode_rle(rle)
            if mask.shape != tuple(feats.original_size):
                H, W = feats.original_size
                raise InvalidInput(
                    f"reference mask for {image_id} is {mask.shape[1]}x{mask.shape[0]} "
                    f"but the image is {W}x{H}"
                )
            if not mask.any():
                raise InvalidInput(f"reference mask for {image_id} is empty")
            ref_pairs.append((None, mask))
            ref_features.append(feats)
        segmenter = model.segmenter if model else self.features.segmenter
        prompter = VisualPrompter(
            segmenter, None, VisualPromptConfig(matcher=matcher_mode, seed=seed)
        )
        prompter.set_references(ref_pairs, features=ref_features)
        for index, image_id in enumerate(targets):
            result = prompter.predict(
                target_embedding=self._embedding(tenant, image_id, model),
                target_features=self.features.dino_features(tenant, image_id),
            )
            pred = next(iter(result.classes.values()))
            score = float(pred.scores.max()) if len(pred.scores) else 0.0
            points = [
                (float(x), float(y), int(lab))
                for (x, y), lab in zip(
                    pred.point_coords.reshape(-1, 2).tolist(),
                    pred.point_labels.reshape(-1).tolist(),
                )
            ]
            yield index, image_id, encode_rle(_column_major(pred.mask)), score, _unique(points)


def _column_major(masks: torch.Tensor) -> np.ndarray:
    """(..., H, W) bool masks as a numpy array of the same shape laid out column-major,
    which is what COCO RLE encodes: torch's (threaded) transpose copy is ~5x numpy's,
    ~1 ms saved per megapixel mask on a click's critical path (BENCHMARKS.md)."""
    return masks.cpu().transpose(-1, -2).contiguous().numpy().swapaxes(-1, -2)


def _unique(points: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    # Negatives are appended to every positive's prompt: report each point once.
    return list(dict.fromkeys(points))
