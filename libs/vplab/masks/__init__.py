"""Masks: COCO RLE wire format, PNG masks/label maps, overlap metrics."""

from vplab.masks.metrics import (
    class_overlaps,
    dice,
    iou,
    mean_class_iou,
    mean_iou,
    per_class_iou,
)
from vplab.masks.png import (
    encode_binary_mask,
    encode_label_map,
    read_binary_mask,
    read_label_map,
    read_label_png,
)
from vplab.masks.rle import decode_rle, encode_rle, rle_area

__all__ = [
    "class_overlaps",
    "decode_rle",
    "dice",
    "encode_binary_mask",
    "encode_label_map",
    "encode_rle",
    "iou",
    "mean_class_iou",
    "mean_iou",
    "per_class_iou",
    "read_binary_mask",
    "read_label_map",
    "read_label_png",
    "rle_area",
]
