"""Prompt segmentation, visual prompting and prompt-free segmentation for tenants.

Tuned models are loaded per (tenant, model_id) from the tenant's own prefix, so another
tenant's model id is simply not found. Methods that leave the image encoder frozen share
the replica's base encoder (and its cached embeddings); encoder-tuned models get their
own encoder copy and their own embedding cache namespace.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from segment_anything.modeling import Sam

from vplab.errors import InvalidInput
from vplab.inference.features import FeatureEngine
from vplab.inference.runtime import adapter_encoder_id
from vplab.masks import decode_rle, encode_rle, read_label_png
from vplab.matching import VisualPromptConfig, VisualPrompter
from vplab.matching.uncertainty import class_score, uncertainty
from vplab.peft import get_method
from vplab.peft.adapter_io import adapter_output
from vplab.segmentation import PromptSegmenter
from vplab.segmentation.mask_input import mask_to_mask_input
from vplab.segmentation.predictor import check_prompt
from vplab.segmentation.prompt_free import prompt_free_decode
from vplab.segmentation.tiling import TiledEmbedding, crop, prompt_anchor
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


def decoder_batch_size(settings: Any, segmenter: PromptSegmenter) -> int:
    """Prompts per decoder call when batching concurrent requests (1 = no batching).

    Automatic (``segment_batch_max`` 0): batch on a GPU, where one decoder call is mostly
    launch overhead; not on CPU, where it did not pay end to end (BENCHMARKS.md section 8:
    requests reach the replica's loop one by one, batches were mostly of 1 at 64 clients,
    and for ViT-B's 1024 frame a batch costs more per prompt than single calls).
    """
    if settings.segment_batch_max > 0:
        return int(settings.segment_batch_max)
    return 16 if segmenter.device.type == "cuda" else 1


class SegmentationEngine:
    """The ML side of the segmentation service. It keeps no tuned models: whoever serves
    it caches them (Ray Serve's multiplexer, sized by ``max_models_per_replica``)."""

    def __init__(self, features: FeatureEngine):
        self.features = features
        self.rt = features.rt
        self.store = features.store
        self.settings = self.rt.settings
        self.limits = RequestLimits(self.settings)
        self._prompters: OrderedDict[tuple, VisualPrompter] = OrderedDict()

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
            self.features.segmenter_for(sam, output),
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
        return self._decode([self._prepare(tenant, image_id, prompt, model)])[0]

    def segment_prompts(self, calls: list[tuple[str, str, Prompt, TunedModel | None]]) -> list[Any]:
        """``segment_prompt`` for several requests at once: the point prompts on one
        embedding with the same shape (model, point count, multimask) go through the decoder
        as one batch. Each entry of the result is what ``segment_prompt`` returns for that
        request, or the exception it raises (one bad request fails alone)."""
        out: list[Any] = [None] * len(calls)
        groups: dict[tuple, list[tuple[int, _PreparedPrompt]]] = {}
        for i, (tenant, image_id, prompt, model) in enumerate(calls):
            try:
                call = self._prepare(tenant, image_id, prompt, model)
            except Exception as e:  # noqa: BLE001 - returned to its own caller
                out[i] = e
                continue
            if call.boxes is not None or call.mask_input is not None or call.coords is None:
                key: tuple = ("single", i)  # boxes / mask inputs: decoded on their own
            else:
                key = (
                    tenant,
                    image_id,
                    model.model_id if model else "",
                    prompt.multimask,
                    call.coords.shape[1],  # same count: no padding tokens the call lacks
                )
            groups.setdefault(key, []).append((i, call))
        for members in groups.values():
            if len(members) > 1:
                try:
                    batch = self._decode([c for _, c in members])
                except Exception:  # noqa: BLE001 - find who fails: each member on its own
                    batch = None
                if batch is not None:
                    for (i, _), result in zip(members, batch):
                        out[i] = result
                    continue
            for i, call in members:
                try:
                    out[i] = self._decode([call])[0]
                except Exception as e:  # noqa: BLE001 - returned to its own caller
                    out[i] = e
        return out

    def _decode(self, batch: list[_PreparedPrompt]) -> list[Any]:
        """One decoder call for prepared prompts of one group (see ``segment_prompts``):
        ``segment_prompt``'s answer for each."""
        first = batch[0]
        coords = None if first.coords is None else np.concatenate([c.coords for c in batch])
        labels = None if first.labels is None else np.concatenate([c.labels for c in batch])
        with torch.no_grad():
            result = first.segmenter.decode(
                first.embedding,
                coords,
                labels,
                boxes=first.boxes,
                mask_input=first.mask_input,
                multimask_output=first.multimask,
            )
        return [
            (_prompt_results(result.masks[b], result.iou_predictions[b]), call.size)
            for b, call in enumerate(batch)
        ]

    def _prepare(
        self, tenant: str, image_id: str, prompt: Prompt, model: TunedModel | None
    ) -> _PreparedPrompt:
        """Validate a prompt and fetch its embedding: the decoder's inputs for one request."""
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
            check_prompt(coords, labels, boxes, H, W)
            if isinstance(emb, TiledEmbedding):  # the mask of the tile the prompt picks
                anchor = prompt_anchor(
                    None if coords is None else coords[0],
                    None if labels is None else labels[0],
                    None if boxes is None else boxes[0],
                )
                if anchor is None:
                    raise InvalidInput("on a tiled image a prompt needs a point or a box")
                prev = crop(prev, emb.tiles[emb.tile_of(*anchor)].window)
            low = segmenter.mask_input_size[0]
            mask_input = mask_to_mask_input(prev, segmenter.img_size, low).numpy()
        check_prompt(coords, labels, boxes, H, W)  # before it can share a batch
        return _PreparedPrompt(
            emb, segmenter, coords, labels, boxes, mask_input, prompt.multimask, (H, W)
        )

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

        def window_logits(e) -> torch.Tensor:  # (h, w) at the embedding's image size
            low = prompt_free_decode(model.sam, e.features, model.output).float()
            full = postprocess_masks(low, e.input_size, e.original_size, model.segmenter.img_size)
            return full[0, 0].cpu()

        with torch.no_grad():
            if isinstance(emb, TiledEmbedding):  # each pixel from the tile whose core holds it
                logits = torch.empty(emb.original_size)
                for tile, e in zip(emb.tiles, emb.embeddings):
                    (y0, x0, y1, x1), (wy, wx) = tile.core, tile.window[:2]
                    logits[y0:y1, x0:x1] = window_logits(e)[y0 - wy : y1 - wy, x0 - wx : x1 - wx]
            else:
                logits = window_logits(emb)
        prob = torch.sigmoid(logits)
        mask = logits > 0
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

    # -- prediction runs -------------------------------------------------------------------
    def predict_target(
        self, tenant: str, run: Any, image_id: str, model: TunedModel | None = None
    ) -> dict[str, Any]:
        """One target of a prediction run (``vplab.predictions.PredictionRun``): per-class
        masks of the per-pixel argmax, their scores and points, and the target's uncertainty.

        The uncertainty (higher = correct this one first) is
        ``vplab.matching.uncertainty``'s: the matcher's confidence and the disagreement of
        the other matcher on the same embeddings.
        """
        if model is not None and model.prompt_free:
            raise InvalidInput(f"model {model.model_id} ({model.method}) is prompt-free")
        keys.check_sha256(image_id, "image_id")
        main = self._run_prompter(tenant, run, model, run.matcher)
        other = self._run_prompter(
            tenant, run, model, "prototype" if run.matcher == "soft" else "soft"
        )
        embedding = self._embedding(tenant, image_id, model)
        features = self.features.dino_features(tenant, image_id)
        result = main.predict(target_embedding=embedding, target_features=features)
        variant = other.predict(target_embedding=embedding, target_features=features)
        H, W = (int(v) for v in embedding.original_size)
        classes = {}
        for class_id in run.classes:
            pred = result.classes.get(class_id)
            points = []
            if pred is not None:
                points = _unique(
                    [
                        (float(x), float(y), int(lab))
                        for (x, y), lab in zip(
                            pred.point_coords.reshape(-1, 2).tolist(),
                            pred.point_labels.reshape(-1).tolist(),
                        )
                    ]
                )
            classes[str(class_id)] = {
                "mask": encode_rle(_column_major(result.label_map == class_id)),
                "score": class_score(result, class_id),
                "points": [list(p) for p in points],
            }
        u = uncertainty(result, variant, run.classes)
        return {
            "height": H,
            "width": W,
            "classes": classes,
            "score": u.score,
            "disagreement": u.disagreement,
            "uncertainty": u.value,
        }

    def _run_prompter(
        self, tenant: str, run: Any, model: TunedModel | None, matcher: str
    ) -> VisualPrompter:
        """The run's references set on a prompter (kept for the run's next targets)."""
        cache_key = (tenant, run.run_id, model.model_id if model else "", matcher)
        prompter = self._prompters.get(cache_key)
        if prompter is not None:
            self._prompters.move_to_end(cache_key)
            return prompter
        shots, features = [], []
        for ref in run.references:
            image_id = ref["image_id"]
            if "label_version" in ref:
                png = self.store.get_bytes(
                    keys.label(tenant, run.dataset_id, image_id, ref["label_version"])
                )
                shot = read_label_png(png, what="reference label").astype(np.int64)
            else:
                shot = decode_rle(ref["mask"]).astype(np.int64) * int(ref["class_id"])
            shots.append((None, shot))
            features.append(self.features.dino_features(tenant, image_id))
        segmenter = model.segmenter if model else self.features.segmenter
        mode: Literal["soft", "prototype"] = "prototype" if matcher == "prototype" else "soft"
        prompter = VisualPrompter(segmenter, None, VisualPromptConfig(matcher=mode, seed=run.seed))
        prompter.set_references(shots, classes=run.classes, features=features)
        self._prompters[cache_key] = prompter
        while len(self._prompters) > 8:
            self._prompters.popitem(last=False)
        return prompter


@dataclass
class _PreparedPrompt:
    embedding: Any  # ImageEmbedding
    segmenter: PromptSegmenter
    coords: np.ndarray | None  # (1, N, 2) original pixels
    labels: np.ndarray | None  # (1, N)
    boxes: np.ndarray | None  # (1, 4)
    mask_input: np.ndarray | None  # (1, 1, 4g, 4g) logits
    multimask: bool
    size: tuple[int, int]  # (H, W)


def _prompt_results(masks: torch.Tensor, scores: torch.Tensor) -> list[tuple[Any, float]]:
    """(rle, score) of one prompt's masks (K, H, W), best score first."""
    scores = scores.float().cpu()
    order = torch.argsort(scores, descending=True).tolist()
    columns = _column_major(masks)
    return [(encode_rle(columns[i]), float(scores[i])) for i in order]


def _column_major(masks: torch.Tensor) -> np.ndarray:
    """(..., H, W) bool masks as a numpy array of the same shape laid out column-major,
    which is what COCO RLE encodes: torch's (threaded) transpose copy is ~5x numpy's,
    ~1 ms saved per megapixel mask on a click's critical path (BENCHMARKS.md)."""
    return masks.cpu().transpose(-1, -2).contiguous().numpy().swapaxes(-1, -2)


def _unique(points: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    # Negatives are appended to every positive's prompt: report each point once.
    return list(dict.fromkeys(points))
