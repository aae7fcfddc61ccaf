"""Export a dataset: its images with their latest labels, or a prediction run's results.

The archive (zip, deflated):
- ``images/<name>``: the image bytes as uploaded; ``<name>`` is the uploaded file name,
  made unique (``<stem>-<sha8><ext>``) when two images share a name, else ``<sha16><ext>``.
- ``format="coco"``: ``annotations.json``: COCO (``images`` with sizes, ``categories`` =
  the dataset's classes, one RLE annotation per class present, provenance in ``info``),
  which ``pycocotools.coco.COCO`` loads.
- ``format="masks"``: ``masks/<stem>.png`` label maps (grey = class id, 0 = background)
  and ``classes.json`` (the classes and the same provenance).
Images without a label (or without a result in the run) are exported without annotations.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

import numpy as np
from PIL import Image

from vplab.datasets import DatasetStore
from vplab.errors import InvalidInput
from vplab.images import format_named
from vplab.masks.png import encode_label_map, read_label_map
from vplab.storage import keys

EXPORT_FORMATS = ("coco", "masks")


@dataclass(frozen=True)
class ExportSource:
    kind: str  # "labels" | "predictions"
    run_id: str | None = None


def parse_source(text: str) -> ExportSource:
    """``labels`` or ``predictions:{run_id}``."""
    if text == "labels":
        return ExportSource("labels")
    kind, _, run_id = text.partition(":")
    if kind == "predictions" and run_id:
        return ExportSource("predictions", keys.check_id(run_id, "run_id"))
    raise InvalidInput(f"source must be 'labels' or 'predictions:<run_id>', got {text!r}")


class _Names:
    """Unique file names inside ``images/``, given as images are written."""

    def __init__(self) -> None:
        self.stems: set[str] = set()

    def name(self, image_id: str, filename: str | None, image_format: str | None) -> str:
        known = format_named(image_format)
        ext = known.ext if known is not None else ".bin"
        name = filename or f"{image_id[:16]}{ext}"
        stem = PurePosixPath(name).stem
        if stem in self.stems:
            name = f"{stem}-{image_id[:8]}{PurePosixPath(name).suffix or ext}"
            stem = PurePosixPath(name).stem
        self.stems.add(stem)
        return name


def export_dataset(
    datasets: DatasetStore,
    tenant: str,
    dataset_id: str,
    fmt: str,
    source: ExportSource,
    out: IO[bytes] | None = None,
) -> IO[bytes]:
    """Write the archive to ``out`` (default: a new temporary file) and return it, rewound.

    One image (and one label map) in memory at a time."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f"format must be one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    from vplab.predictions import get_result, prediction_runs, result_ids, result_label_map

    ds = datasets.get_dataset(tenant, dataset_id)
    ids = datasets.list_images(tenant, dataset_id)
    info: dict[str, Any] = {
        "description": f"VP Lab export of dataset {ds.name!r}",
        "dataset_id": dataset_id,
        "source": source.kind,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if source.kind == "labels":
        versions = datasets.list_labels(tenant, dataset_id)
        info["label_versions"] = versions

        def label_of(image_id: str) -> np.ndarray | None:
            if image_id not in versions:
                return None
            png = datasets.get_label(tenant, dataset_id, image_id, versions[image_id]).png
            return read_label_map(png)
    else:
        run = prediction_runs(datasets.store).get(tenant, str(source.run_id))
        if run.dataset_id != dataset_id:
            raise InvalidInput(f"run {run.id} is not a run of dataset {dataset_id}")
        have = set(result_ids(datasets.store, tenant, run.id))
        info.update(run_id=run.id, model_id=run.model_id or None)

        def label_of(image_id: str) -> np.ndarray | None:
            if image_id not in have:
                return None
            return result_label_map(get_result(datasets.store, tenant, run.id, image_id))

    def blob(image_id: str) -> bytes:
        return datasets.get_image_bytes(tenant, image_id)

    names = _Names()
    classes = [{"id": c.id, "name": c.name, "color": c.color} for c in ds.classes]
    # The caller streams and closes it (a temporary file: deleted on close).
    out = out if out is not None else tempfile.TemporaryFile()  # noqa: SIM115
    from vplab.dataio.coco import class_annotations

    coco: dict[str, Any] = {
        "info": info,
        "images": [],
        "annotations": [],
        "categories": [{"id": c["id"], "name": c["name"], "supercategory": ""} for c in classes],
    }
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for n, image_id in enumerate(ids, start=1):
            data = blob(image_id)
            with Image.open(io.BytesIO(data)) as im:  # the header only: format and size
                image_format, (width, height) = im.format, im.size
            name = names.name(
                image_id, datasets.image_info(tenant, dataset_id, image_id).filename, image_format
            )
            z.writestr(f"images/{name}", data)
            label = label_of(image_id)
            if fmt == "coco":
                if label is not None:
                    height, width = label.shape
                coco["images"].append(
                    {
                        "id": n,
                        "file_name": name,
                        "width": width,
                        "height": height,
                        "vplab_image_id": image_id,
                    }
                )
                if label is not None:
                    coco["annotations"] += class_annotations(label, n, len(coco["annotations"]) + 1)
            elif label is not None:
                z.writestr(f"masks/{PurePosixPath(name).stem}.png", encode_label_map(label))
        if fmt == "coco":
            z.writestr("annotations.json", json.dumps(coco))
        else:
            z.writestr("classes.json", json.dumps({"classes": classes, "info": info}, indent=1))
    out.seek(0)
    return out
