"""Label maps <-> COCO annotations (RLE segmentations, as pycocotools writes them).

One annotation per (image, class) present: a label map holds classes, not instances, so
each class's region is one annotation (``iscrowd`` 0, compressed RLE, its area and box).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as cocomask


def class_annotations(label_map: np.ndarray, image_id: int, first_id: int) -> list[dict[str, Any]]:
    """COCO annotations of the classes present in ``label_map`` (ids ``first_id``...)."""
    out: list[dict[str, Any]] = []
    for class_id in (int(c) for c in np.unique(label_map) if c != 0):
        rle = cocomask.encode(np.asfortranarray(label_map == class_id, dtype=np.uint8))
        x, y, w, h = (float(v) for v in cocomask.toBbox(rle))
        out.append(
            {
                "id": first_id + len(out),
                "image_id": image_id,
                "category_id": class_id,
                "segmentation": {
                    "size": [int(s) for s in rle["size"]],
                    "counts": rle["counts"].decode(),
                },
                "area": float(cocomask.area(rle)),
                "bbox": [x, y, w, h],
                "iscrowd": 0,
            }
        )
    return out
