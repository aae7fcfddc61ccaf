"""Prompt segmentation with SAM: embed an image once, decode many prompt sets in one call.

``PromptSegmenter`` is our ``SamPredictor``: same numbers, but stateless (the embedding is
a value you keep, cache or ship), validated inputs (``InvalidInput`` naming the problem)
and every prompt set of a request decoded in ONE mask-decoder call.

Point labels: 1 = positive, 0 = negative. -1 is padding only: SAM embeds a -1 point as
"not a point", so a negative sent as -1 would be silently ignored; callers therefore may
not send -1, and we use it only to pad prompt sets with fewer points. Pad points are
still tokens the decoder attends to (as SAM's own pad point is), so a set decoded next to
a longer one can differ slightly from the same set decoded alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam

from vplab.errors import InvalidInput
from vplab.images import check_rgb_image
from vplab.segmentation.embedding import ImageEmbedding
from vplab.segmentation.tiling import (
    TiledEmbedding,
    crop,
    default_halo,
    needs_tiling,
    prompt_anchor,
    tile_grid,
)
from vplab.segmentation.transforms import (
    apply_boxes,
    apply_coords,
    image_to_tensor,
    normalize_pad,
    postprocess_masks,
    resize_longest_side,
)

PointsInput = np.ndarray | Sequence[np.ndarray] | None

# The base models serve SAM's multimask outputs, picked by the IoU head (what they were
# pretrained on); a tuned model serves the output its recipe trained (``Recipe.output``).
BASE_OUTPUT = "best_of_3"


def output_selection(output: str) -> tuple[bool, slice]:
    """``DecoderOutput`` -> (multimask_output for the decoder, which of its masks to keep)."""
    if output == "token0":
        return False, slice(0, 1)
    if output == "token1":
        return True, slice(0, 1)
    if output == "best_of_3":
        return True, slice(0, 3)
    raise InvalidInput(f"unknown decoder output {output!r}")


@dataclass
class DecodeResult:
    """``masks``: (B, M, H, W) bool (float logits with ``return_logits``), original pixels.
    ``iou_predictions``: (B, M). ``low_res_logits``: (B, M, 4g, 4g) (256x256 for the
    official SAMs), usable as the next call's ``mask_input``. M is 3 with
    ``multimask_output`` else 1."""

    masks: torch.Tensor
    iou_predictions: torch.Tensor
    low_res_logits: torch.Tensor


def decode_torch(
    sam: Sam,
    image_embeddings: torch.Tensor,
    point_coords: torch.Tensor | None = None,
    point_labels: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    mask_input: torch.Tensor | None = None,
    multimask_output: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder on tensors already in the resized (img_size) frame.

    image_embeddings (1, C, g, g); point_coords (B, N, 2) xy; point_labels (B, N) in
    {1, 0, -1 pad}; boxes (B, 4) xyxy; mask_input (B, 1, 4g, 4g) logits.
    Returns (low_res_logits (B, M, 4g, 4g), iou_predictions (B, M)). No ``no_grad`` here:
    the trainer backpropagates through it.
    """
    if image_embeddings.ndim != 4 or image_embeddings.shape[0] != 1:
        # MaskDecoder repeats the embedding once per prompt set: B images with B prompt
        # sets would silently give B*B masks. One image per call.
        raise InvalidInput(
            "image_embeddings must be (1, C, h, w) (one image per decode), "
            f"got {tuple(image_embeddings.shape)}"
        )
    points = (point_coords, point_labels) if point_coords is not None else None
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    # sparse (B, n_tokens, C), dense (B, C, g, g)
    low_res, iou = sam.mask_decoder(
        image_embeddings=image_embeddings,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
    )
    return low_res, iou


class PromptSegmenter:
    """Embed images with SAM's encoder and decode point/box/mask prompts."""

    def __init__(
        self,
        sam: Sam,
        device: torch.device | str | None = None,
        amp: bool | None = None,
        output: str = BASE_OUTPUT,
        tile_large_images: bool = True,
        tile_halo: int | None = None,
    ):
        output_selection(output)  # unknown -> InvalidInput
        # The decoder output this model serves (``decode(multimask_output=None)``).
        self.output = output
        if device is not None:
            sam = sam.to(device)
        self.sam = sam.eval()
        self.device: torch.device = sam.device
        self.img_size: int = sam.image_encoder.img_size
        self.mask_input_size: tuple[int, int] = tuple(sam.prompt_encoder.mask_input_size)
        self.embedding_shape = (
            sam.prompt_encoder.embed_dim,
            *sam.prompt_encoder.image_embedding_size,
        )
        # bf16 autocast for the encoder on CUDA only: on CPU it is slower, and tests
        # compare against SamPredictor in fp32.
        self.amp = (self.device.type == "cuda") if amp is None else amp
        # Images larger than the encoder's input: tiles with this halo (vplab.segmentation.tiling).
        self.tile_large_images = tile_large_images
        self.tile_halo = default_halo(self.img_size) if tile_halo is None else tile_halo

    @property
    def mask_score_threshold(self) -> float | None:
        """The visual-prompting mask-score threshold calibrated for these SAM weights
        (``vplab.models.embedded``), or None when they carry none (the official SAM)."""
        return getattr(self.sam, "vplab_mask_score_threshold", None)

    # --- encoder -----------------------------------------------------------------------

    @torch.no_grad()
    def embed_batch(
        self, images: Sequence[np.ndarray], batch_size: int = 4
    ) -> list[ImageEmbedding]:
        """Embed several images, ``batch_size`` per encoder forward pass."""
        out: list[ImageEmbedding] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            tensors, sizes = [], []
            for i, image in enumerate(chunk):
                check_rgb_image(image, f"images[{start + i}]" if len(images) > 1 else "image")
                resized = resize_longest_side(image, self.img_size)
                x = image_to_tensor(resized, self.device)  # (1, 3, h', w') 0-255
                x = normalize_pad(x, self.sam.pixel_mean, self.sam.pixel_std, self.img_size)
                tensors.append(x)
                original = (int(image.shape[0]), int(image.shape[1]))
                sizes.append((original, (resized.shape[0], resized.shape[1])))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                features = self.sam.image_encoder(torch.cat(tensors))  # (b, C, g, g)
            features = features.float()
            for j, (original, input_size) in enumerate(sizes):
                out.append(ImageEmbedding(features[j : j + 1], original, input_size))
        return out

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        """HxWx3 uint8 RGB -> ``ImageEmbedding`` (one encoder pass, no gradients)."""
        return self.embed_batch([image])[0]

    def embed_tiled(self, image: np.ndarray, halo: int | None = None) -> TiledEmbedding:
        """Every window of the image's tile grid, at the image's resolution."""
        check_rgb_image(image, "image")
        H, W = int(image.shape[0]), int(image.shape[1])
        tiles = tile_grid(H, W, self.img_size, self.tile_halo if halo is None else halo)
        return TiledEmbedding(
            tiles, self.embed_batch([crop(image, t.window) for t in tiles]), (H, W)
        )

    def embed_images(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding | TiledEmbedding]:
        """``embed_batch``, except that an image larger than the encoder's input is tiled
        (unless ``tile_large_images`` is off: then it is shrunk to fit, as SAM does)."""
        large = [
            self.tile_large_images and needs_tiling(im.shape[0], im.shape[1], self.img_size)
            for im in images
        ]
        small = iter(self.embed_batch([im for im, big in zip(images, large) if not big]))
        return [self.embed_tiled(im) if big else next(small) for im, big in zip(images, large)]

    # --- decoder -----------------------------------------------------------------------

    def decode(
        self,
        embedding: ImageEmbedding | TiledEmbedding,
        point_coords: PointsInput = None,
        point_labels: PointsInput = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | torch.Tensor | None = None,
        multimask_output: bool | None = True,
        return_logits: bool = False,
    ) -> DecodeResult:
        """Decode B prompt sets on one image in a single decoder call.

        point_coords: (B, N, 2) xy in ORIGINAL image pixels, or a list of B (N_i, 2)
        arrays (ragged sets are padded with label -1), or (N, 2) for one set.
        point_labels: matching (B, N) / list of (N_i,) / (N,), values in {0, 1}.
        boxes: (B, 4) or (4,) xyxy in original pixels. mask_input: (B, 1, 4g, 4g) logits,
        e.g. a previous ``low_res_logits`` entry. Every given prompt kind must have the
        same B. ``multimask_output=None``: the output this model serves (``self.output``:
        3 masks for "best_of_3", else the one trained mask) - what visual prompting uses.

        A ``TiledEmbedding``: each set is decoded on the tile its anchor picks
        (``vplab.segmentation.tiling``), its masks placed in the whole image; there
        ``mask_input`` and ``low_res_logits`` are in that tile's frame.
        """
        if isinstance(embedding, TiledEmbedding):
            return self._decode_tiled(
                embedding, point_coords, point_labels, boxes, mask_input, multimask_output,
                return_logits,
            )  # fmt: skip
        emb = self._check_embedding(embedding)
        H, W = emb.original_size
        points = _parse_points(point_coords, point_labels, H, W)
        box_arr = _parse_boxes(boxes, H, W)
        masks_in = _parse_mask_input(mask_input, self.mask_input_size)
        sizes = {
            kind: n
            for kind, n in (
                ("point sets", None if points is None else points[0].shape[0]),
                ("boxes", None if box_arr is None else box_arr.shape[0]),
                ("mask_input", None if masks_in is None else masks_in.shape[0]),
            )
            if n is not None
        }
        if not sizes:
            raise InvalidInput(
                "no prompt given: pass point_coords/point_labels, boxes or mask_input"
            )
        if len(set(sizes.values())) > 1:
            raise InvalidInput(
                f"prompt batch sizes differ: {sizes}; each prompt kind needs one entry per prompt set"
            )
        if next(iter(sizes.values())) == 0:
            raise InvalidInput("no prompt set given (batch size 0)")

        coords_t = labels_t = boxes_t = mask_t = None
        if points is not None:
            coords = apply_coords(points[0], emb.original_size, self.img_size)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=self.device)
            labels_t = torch.as_tensor(points[1], dtype=torch.int, device=self.device)
        if box_arr is not None:
            boxes_np = apply_boxes(box_arr, emb.original_size, self.img_size)
            boxes_t = torch.as_tensor(boxes_np, dtype=torch.float, device=self.device)
        if masks_in is not None:
            mask_t = masks_in.to(device=self.device, dtype=torch.float)

        if multimask_output is None:
            multimask, keep = output_selection(self.output)
        else:
            multimask, keep = multimask_output, slice(None)
        with torch.no_grad():
            low_res, iou = decode_torch(
                self.sam, emb.features, coords_t, labels_t, boxes_t, mask_t, multimask
            )
            low_res, iou = low_res[:, keep], iou[:, keep]
            masks = postprocess_masks(low_res, emb.input_size, emb.original_size, self.img_size)
        if not return_logits:
            masks = masks > self.sam.mask_threshold
        return DecodeResult(masks=masks, iou_predictions=iou, low_res_logits=low_res)

    def _decode_tiled(
        self,
        tiled: TiledEmbedding,
        point_coords: PointsInput,
        point_labels: PointsInput,
        boxes: np.ndarray | None,
        mask_input: np.ndarray | torch.Tensor | None,
        multimask_output: bool | None,
        return_logits: bool,
    ) -> DecodeResult:
        H, W = tiled.original_size
        points = _parse_points(point_coords, point_labels, H, W)
        box_arr = _parse_boxes(boxes, H, W)
        masks_in = _parse_mask_input(mask_input, self.mask_input_size)
        n = points[0].shape[0] if points is not None else None
        n = box_arr.shape[0] if n is None and box_arr is not None else n
        if n is None:
            raise InvalidInput(
                "on a tiled image a prompt needs a point or a box: it picks the tile"
            )
        groups: dict[int, list[int]] = {}
        for b in range(n):
            anchor = prompt_anchor(
                None if points is None else points[0][b],
                None if points is None else points[1][b],
                None if box_arr is None else box_arr[b],
            )
            if anchor is None:
                raise InvalidInput(f"prompt set {b} has no point or box to pick its tile")
            groups.setdefault(tiled.tile_of(*anchor), []).append(b)
        parts = []
        for t, members in groups.items():
            y0, x0, y1, x1 = tiled.tiles[t].window
            coords = labels = None
            if points is not None:  # the tile's points, in its frame (the rest unseen)
                coords, labels = [], []
                for b in members:
                    c, lab = points[0][b], points[1][b]
                    keep = (lab >= 0) & (c[:, 0] >= x0) & (c[:, 0] <= x1)
                    keep &= (c[:, 1] >= y0) & (c[:, 1] <= y1)
                    coords.append(c[keep] - (x0, y0))
                    labels.append(lab[keep])
            local_boxes = None
            if box_arr is not None:  # clipped to the window
                bx = box_arr[members]
                local_boxes = np.stack(
                    [
                        np.clip(bx[:, 0], x0, x1) - x0,
                        np.clip(bx[:, 1], y0, y1) - y0,
                        np.clip(bx[:, 2], x0, x1) - x0,
                        np.clip(bx[:, 3], y0, y1) - y0,
                    ],
                    axis=1,
                )
            part = self.decode(
                tiled.embeddings[t],
                coords,
                labels,
                boxes=local_boxes,
                mask_input=None if masks_in is None else masks_in[members],
                multimask_output=multimask_output,
                return_logits=return_logits,
            )
            parts.append((torch.as_tensor(members), tiled.tiles[t].window, part))
        first = parts[0][2]
        m, device = first.masks.shape[1], first.masks.device
        fill = -1e4 if return_logits else 0  # outside a set's window: background
        masks = torch.full((n, m, H, W), fill, dtype=first.masks.dtype, device=device)
        iou = torch.zeros((n, m), dtype=first.iou_predictions.dtype, device=device)
        low_res = torch.zeros((n, m, *first.low_res_logits.shape[2:]), device=device)
        for index, (y0, x0, y1, x1), part in parts:
            masks[index, :, y0:y1, x0:x1] = part.masks
            iou[index] = part.iou_predictions
            low_res[index] = part.low_res_logits.to(low_res.dtype)
        return DecodeResult(masks=masks, iou_predictions=iou, low_res_logits=low_res)

    def _check_embedding(self, embedding: ImageEmbedding) -> ImageEmbedding:
        if not isinstance(embedding, ImageEmbedding):
            raise InvalidInput(
                f"embedding must be an ImageEmbedding, got {type(embedding).__name__}"
            )
        shape = tuple(embedding.features.shape)
        if shape != (1, *self.embedding_shape):
            raise InvalidInput(
                f"embedding has shape {shape} but this model expects {(1, *self.embedding_shape)} "
                "(was it computed by a different SAM model?)"
            )
        h, w = embedding.input_size
        if max(h, w) != self.img_size or min(embedding.original_size) < 1:
            raise InvalidInput(
                f"embedding sizes are inconsistent: original_size {embedding.original_size}, "
                f"input_size {embedding.input_size} (longest side must be {self.img_size})"
            )
        return embedding.to(self.device, torch.float)


# --- input validation --------------------------------------------------------------------


def _numeric(value: object, field: str) -> np.ndarray:
    try:
        arr = np.asarray(value.detach().float().cpu() if isinstance(value, torch.Tensor) else value)
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"{field} is not a numeric array: {e}") from e
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InvalidInput(f"{field} must be numeric, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInput(f"{field} contains NaN or infinite values")
    return arr


def _check_labels(labels: np.ndarray, field: str) -> np.ndarray:
    if labels.size and not np.all(labels == np.round(labels)):
        raise InvalidInput(f"{field} must be integers 0 (negative) or 1 (positive)")
    labels = labels.astype(np.int64)
    bad = labels[(labels != 0) & (labels != 1)]
    if bad.size:
        hint = " (-1 is reserved for padding; a negative point is 0)" if np.any(bad == -1) else ""
        raise InvalidInput(f"{field} must be 0 or 1, got {sorted(set(bad.tolist()))[:5]}{hint}")
    return labels


def _check_in_image(coords: np.ndarray, H: int, W: int, field: str) -> None:
    xs, ys = coords[..., 0], coords[..., 1]
    outside = (xs < 0) | (xs > W) | (ys < 0) | (ys > H)
    if np.any(outside):
        first = coords[outside][0] if coords.ndim > 1 else coords
        raise InvalidInput(
            f"{field}: {int(outside.sum())} point(s) outside the {W}x{H} (WxH) image, "
            f"e.g. (x={float(first[0]):g}, y={float(first[1]):g})"
        )


def check_prompt(
    coords: PointsInput, labels: PointsInput, boxes: np.ndarray | None, H: int, W: int
) -> None:
    """Raise InvalidInput for the points / boxes ``decode`` would reject on an H x W image
    (callers that batch several requests check each one first)."""
    _parse_points(coords, labels, H, W)
    _parse_boxes(boxes, H, W)


def _parse_points(
    coords: PointsInput, labels: PointsInput, H: int, W: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """-> ((B, N, 2) float64 xy, (B, N) int64 labels with -1 padding) or None."""
    if coords is None and labels is None:
        return None
    if coords is None or labels is None:
        raise InvalidInput("point_coords and point_labels must be given together")
    if isinstance(coords, (list, tuple)):
        if not isinstance(labels, (list, tuple)) or len(labels) != len(coords):
            raise InvalidInput(
                "point_coords given as a list of prompt sets needs point_labels as a list "
                "of the same length"
            )
        sets = []
        for i, (c, lab) in enumerate(zip(coords, labels)):
            c_arr = _numeric(c, f"point_coords[{i}]").astype(float)
            if c_arr.size == 0:
                c_arr = np.zeros((0, 2))
            elif c_arr.ndim != 2 or c_arr.shape[1] != 2:
                raise InvalidInput(f"point_coords[{i}] must have shape (N, 2), got {c_arr.shape}")
            l_arr = _numeric(lab, f"point_labels[{i}]")
            if l_arr.size == 0:
                l_arr = l_arr.reshape(0)
            if l_arr.ndim != 1 or l_arr.shape[0] != c_arr.shape[0]:
                raise InvalidInput(
                    f"point_labels[{i}] must have shape ({c_arr.shape[0]},) to match "
                    f"point_coords[{i}], got {l_arr.shape}"
                )
            _check_in_image(c_arr, H, W, f"point_coords[{i}]")
            sets.append((c_arr, _check_labels(l_arr, f"point_labels[{i}]")))
        n = max((c.shape[0] for c, _ in sets), default=0)
        out_c = np.zeros((len(sets), n, 2))
        out_l = np.full((len(sets), n), -1, dtype=np.int64)  # -1: padding, ignored by SAM
        for i, (c, lab) in enumerate(sets):
            out_c[i, : c.shape[0]] = c
            out_l[i, : lab.shape[0]] = lab
        return (out_c, out_l) if n else None

    c_arr = _numeric(coords, "point_coords").astype(float)
    l_arr = _numeric(labels, "point_labels")
    if c_arr.ndim == 2 and l_arr.ndim == 1:  # one prompt set
        c_arr, l_arr = c_arr[None], l_arr[None]
    if c_arr.ndim != 3 or c_arr.shape[2] != 2:
        raise InvalidInput(f"point_coords must have shape (B, N, 2) or (N, 2), got {c_arr.shape}")
    if l_arr.shape != c_arr.shape[:2]:
        raise InvalidInput(
            f"point_labels must have shape {c_arr.shape[:2]} to match point_coords, got {l_arr.shape}"
        )
    _check_in_image(c_arr, H, W, "point_coords")
    l_arr = _check_labels(l_arr, "point_labels")
    return (c_arr, l_arr) if c_arr.shape[1] else None


def _parse_boxes(boxes: np.ndarray | None, H: int, W: int) -> np.ndarray | None:
    """-> (B, 4) float64 xyxy or None."""
    if boxes is None:
        return None
    arr = _numeric(boxes, "boxes").astype(float)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InvalidInput(
            f"boxes must have shape (B, 4) or (4,) as x0, y0, x1, y1, got {np.shape(boxes)}"
        )
    inverted = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if np.any(inverted):
        i = int(np.argmax(inverted))
        raise InvalidInput(
            f"boxes[{i}] = {arr[i].tolist()} is inverted: need x0 <= x1 and y0 <= y1"
        )
    _check_in_image(arr.reshape(-1, 2, 2), H, W, "boxes")
    return arr


def _parse_mask_input(
    mask_input: np.ndarray | torch.Tensor | None, size: tuple[int, int]
) -> torch.Tensor | None:
    if mask_input is None:
        return None
    t = torch.as_tensor(_numeric(mask_input, "mask_input"), dtype=torch.float)
    if t.ndim != 4 or t.shape[1] != 1 or tuple(t.shape[2:]) != tuple(size):
        raise InvalidInput(
            f"mask_input must have shape (B, 1, {size[0]}, {size[1]}) (low-res logits), "
            f"got {tuple(t.shape)}"
        )
    return t
