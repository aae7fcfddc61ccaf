"""Import an archive of images and labels into a dataset.

Two layouts, detected from the members:
- masks: image files anywhere outside ``masks/``, and ``masks/<stem>.png`` label maps or
  binary masks matched to them by file stem; optional ``classes.json`` (``{"classes":
  [{"id", "name"}]}``, what ``export`` writes) names the ids, which are mapped to the
  dataset's classes by name (missing names are appended as classes).
- COCO: one JSON with ``images``, ``annotations`` and ``categories``; RLE or polygon
  segmentations; categories map to classes by name (missing ones appended); an
  annotation later in the file wins where two overlap.

The whole index (the archive's directory, the COCO JSON, classes.json) is validated before
anything is written: an unsafe archive, a wrong image id, an unknown category, a polygon
out of bounds or an RLE of the wrong size is an ``InvalidInput`` naming it, and nothing
changes. Then each image is imported on its own: a corrupt image or a mask of the wrong
size is reported in ``errors`` and the rest goes on. Re-importing adds nothing twice:
images are content-addressed, and a label equal to the image's latest is not written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
from pycocotools import mask as cocomask

from vplab.dataio.archive import Archive, Limits
from vplab.datasets import DatasetStore
from vplab.errors import InvalidInput, NotFound, VPLabError
from vplab.masks.png import encode_label_map, read_label_map

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")


@dataclass
class ImportReport:
    layout: str  # "masks" | "coco"
    images_added: int = 0
    images_present: int = 0  # already in the dataset
    labels_written: int = 0
    labels_unchanged: int = 0
    classes_added: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)  # {"entry", "error"}

    def plain(self) -> dict[str, Any]:
        return asdict(self)


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _json(archive: Archive, name: str) -> Any:
    try:
        return json.loads(archive.read(name))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"{name} is not valid JSON: {e}") from None


def _coco_file(archive: Archive) -> str | None:
    for name in archive.names():
        if name.lower().endswith(".json") and PurePosixPath(name).name != "classes.json":
            doc = _json(archive, name)
            if not isinstance(doc, dict) or "annotations" not in doc:
                continue  # not a COCO file: some other JSON riding along
            # An annotations file without its images or categories cannot be read; skipping
            # it would import the images unlabelled and hide the user's mistake.
            missing = [k for k in ("images", "categories") if k not in doc]
            if missing:
                raise InvalidInput(f"{name} has annotations but no {' or '.join(missing)}")
            return name
    return None


def _class_ids(
    datasets: DatasetStore, tenant: str, dataset_id: str, names: dict[int, str], dry: bool
) -> tuple[dict[int, int], list[str]]:
    """Archive class id -> dataset class id, by name; appends missing names unless ``dry``."""
    ds = datasets.get_dataset(tenant, dataset_id)
    by_name = {c.name: c.id for c in ds.classes}
    missing = [n for n in dict.fromkeys(names.values()) if n not in by_name]
    if missing and not dry:
        ds = datasets.update_dataset(tenant, dataset_id, classes=[{"name": n} for n in missing])
        by_name = {c.name: c.id for c in ds.classes}
    return {k: by_name.get(n, -1) for k, n in names.items()}, missing


# --- COCO ------------------------------------------------------------------------------------


@dataclass
class _CocoImage:
    file: str  # the archive member
    width: int
    height: int
    annotations: list[dict[str, Any]]


def _check_coco(
    doc: dict[str, Any], archive: Archive, source: str
) -> tuple[dict[int, str], dict[int, _CocoImage]]:
    def bad(msg: str) -> InvalidInput:
        return InvalidInput(f"{source}: {msg}")

    if not all(isinstance(doc[k], list) for k in ("images", "annotations", "categories")):
        raise bad("images, annotations and categories must be lists")
    categories: dict[int, str] = {}
    for c in doc["categories"]:
        if (
            not isinstance(c, dict)
            or not isinstance(c.get("id"), int)
            or not isinstance(c.get("name"), str)
            or not c["name"].strip()
        ):
            raise bad(f"a category needs an integer id and a name, got {str(c)[:80]}")
        if c["id"] in categories:
            raise bad(f"category id {c['id']} appears twice")
        categories[c["id"]] = c["name"].strip()
    by_base = {PurePosixPath(n).name: n for n in archive.names() if _is_image(n)}
    images: dict[int, _CocoImage] = {}
    for im in doc["images"]:
        ok = (
            isinstance(im, dict)
            and isinstance(im.get("id"), int)
            and isinstance(im.get("file_name"), str)
        )
        if not ok or not all(isinstance(im.get(k), int) and im[k] > 0 for k in ("width", "height")):
            raise bad(
                f"an image needs an integer id, a file_name and positive width/height, got {str(im)[:80]}"
            )
        if im["id"] in images:
            raise bad(f"image id {im['id']} appears twice")
        file = next(
            (n for n in (im["file_name"], f"images/{im['file_name']}") if n in archive.members),
            by_base.get(PurePosixPath(im["file_name"]).name),
        )
        if file is None:
            raise bad(f"image {im['id']} ({im['file_name']!r}) is not in the archive")
        images[im["id"]] = _CocoImage(file, im["width"], im["height"], [])
    for a in doc["annotations"]:
        if not isinstance(a, dict):
            raise bad("annotations must be objects")
        aid = a.get("id", "?")
        if a.get("image_id") not in images:
            raise bad(
                f"annotation {aid} refers to image id {a.get('image_id')!r}, which is not in images"
            )
        if a.get("category_id") not in categories:
            raise bad(
                f"annotation {aid} refers to category id {a.get('category_id')!r}, which is not in categories"
            )
        im = images[a["image_id"]]
        seg = a.get("segmentation")
        if isinstance(seg, dict):
            if list(seg.get("size", [])) != [im.height, im.width] or not isinstance(
                seg.get("counts"), (str, list)
            ):
                raise bad(
                    f"annotation {aid}: an RLE of size {seg.get('size')} on a {im.height}x{im.width} image"
                )
        elif isinstance(seg, list) and seg:
            for poly in seg:
                if (
                    not isinstance(poly, list)
                    or len(poly) < 6
                    or len(poly) % 2
                    or not all(isinstance(v, (int, float)) for v in poly)
                ):
                    raise bad(f"annotation {aid}: a polygon must be a flat list of >= 3 x, y pairs")
                xs, ys = poly[0::2], poly[1::2]
                if min(xs) < 0 or min(ys) < 0 or max(xs) > im.width or max(ys) > im.height:
                    raise bad(
                        f"annotation {aid}: a polygon lies outside its {im.width}x{im.height} image"
                    )
        else:
            raise bad(f"annotation {aid} has no segmentation (RLE or polygons)")
        im.annotations.append(a)
    return categories, images


def _coco_label_map(im: _CocoImage, class_of: dict[int, int]) -> np.ndarray:
    labels = np.zeros((im.height, im.width), np.uint16)
    for a in im.annotations:
        seg = a["segmentation"]
        if isinstance(seg, list):
            rle = cocomask.merge(cocomask.frPyObjects(seg, im.height, im.width))
        elif isinstance(seg["counts"], list):
            rle = cocomask.frPyObjects(seg, im.height, im.width)
        else:
            rle = {"size": seg["size"], "counts": seg["counts"].encode()}
        labels[cocomask.decode(rle).astype(bool)] = class_of[a["category_id"]]
    return labels


# --- the import ------------------------------------------------------------------------------


@dataclass
class ImportPlan:
    """A validated archive: what will be imported, in order (``items``: member name and a
    loader of its label map, or None), and the report the import fills in."""

    archive: Archive
    report: ImportReport
    items: list[tuple[str, Any]]

    @property
    def total(self) -> int:
        return len(self.items)


def plan_import(
    datasets: DatasetStore,
    tenant: str,
    dataset_id: str,
    path: str | Path | IO[bytes],
    limits: Limits | None = None,
    dry: bool = False,
) -> ImportPlan:
    """Open and validate the archive's whole index (see the module docstring). ``dry``
    writes nothing (missing classes are not added): the check before a job is queued.
    The caller closes ``plan.archive``."""
    datasets.get_dataset(tenant, dataset_id)  # NotFound first
    max_bytes = datasets.settings.max_image_bytes
    archive = Archive(path, limits or Limits(max_member_bytes=max_bytes))
    try:
        coco_name = _coco_file(archive)
        if coco_name is not None:
            doc = _json(archive, coco_name)
            categories, coco_images = _check_coco(doc, archive, coco_name)
            report = ImportReport("coco")
            class_of, report.classes_added = _class_ids(
                datasets, tenant, dataset_id, categories, dry=dry
            )
            # An image without annotations stays unlabelled (not an empty label).
            items: list[tuple[str, Any]] = [
                (im.file, (lambda im=im: _coco_label_map(im, class_of)) if im.annotations else None)
                for im in coco_images.values()
            ]
        else:
            report, items = _masks_plan(datasets, tenant, dataset_id, archive, dry)
    except BaseException:
        archive.close()
        raise
    return ImportPlan(archive, report, items)


def import_archive(
    datasets: DatasetStore,
    tenant: str,
    dataset_id: str,
    path: str | Path | IO[bytes],
    limits: Limits | None = None,
    on_item: Callable[[str, ImportReport], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> ImportReport:
    """Import the archive (a path or a seekable binary file) into the dataset (see the
    module docstring). ``on_item(member, report)`` follows each image; ``should_stop``,
    asked before each, ends the import early (what was imported stays)."""
    plan = plan_import(datasets, tenant, dataset_id, path, limits)
    try:
        for file, label in plan.items:
            if should_stop():
                break
            _import_one(datasets, tenant, dataset_id, plan.archive, file, label, plan.report)
            if on_item is not None:
                on_item(file, plan.report)
        return plan.report
    finally:
        plan.archive.close()


def _masks_plan(datasets: DatasetStore, tenant: str, dataset_id: str, archive: Archive, dry: bool):
    names = list(archive.names())
    in_masks = lambda n: "masks" in PurePosixPath(n).parts[:-1]  # noqa: E731
    masks = {PurePosixPath(n).stem: n for n in names if in_masks(n) and n.lower().endswith(".png")}
    images = [n for n in names if _is_image(n) and not in_masks(n)]
    if not images:
        raise InvalidInput("the archive holds no images (png, jpg, tif, bmp, gif, webp)")
    stems: dict[str, str] = {}
    for n in images:
        stem = PurePosixPath(n).stem
        if stem in stems and masks.get(stem):
            raise InvalidInput(f"{stems[stem]!r} and {n!r} share the stem its mask is matched by")
        stems[stem] = n
    remap: dict[int, int] | None = None
    report = ImportReport("masks")
    classes_file = next((n for n in names if PurePosixPath(n).name == "classes.json"), None)
    if classes_file is not None:
        doc = _json(archive, classes_file)
        listed = doc.get("classes") if isinstance(doc, dict) else doc
        if not isinstance(listed, list) or not all(
            isinstance(c, dict)
            and isinstance(c.get("id"), int)
            and c["id"] > 0
            and isinstance(c.get("name"), str)
            for c in listed
        ):
            raise InvalidInput(f"{classes_file}: expected classes as [{{'id': >0, 'name': ...}}]")
        remap, report.classes_added = _class_ids(
            datasets, tenant, dataset_id, {c["id"]: c["name"] for c in listed}, dry=dry
        )

    def label_of(mask_name: str):
        def load() -> np.ndarray:
            arr = read_label_map(
                archive.read(mask_name),
                datasets.settings.max_image_bytes,
                datasets.settings.max_image_pixels,
            )
            if remap is None:
                return arr
            unknown = sorted(set(np.unique(arr).tolist()) - set(remap) - {0})
            if unknown:
                raise InvalidInput(
                    f"{mask_name} has values {unknown[:5]} that classes.json does not name"
                )
            out = np.zeros(arr.shape, np.uint16)
            for src, dst in remap.items():
                out[arr == src] = dst
            return out

        return load

    items = [
        (n, label_of(masks[PurePosixPath(n).stem]) if PurePosixPath(n).stem in masks else None)
        for n in images
    ]
    return report, items


def _import_one(
    datasets, tenant, dataset_id, archive: Archive, file: str, label, report: ImportReport
) -> None:
    try:
        data = archive.read(file)
        image_id, added = datasets.put_image(tenant, dataset_id, data, PurePosixPath(file).name)
        if added:
            report.images_added += 1
        else:
            report.images_present += 1
        if label is None:
            return
        arr = label()
        try:
            current = read_label_map(datasets.get_label(tenant, dataset_id, image_id).png)
        except NotFound:
            current = None
        if current is not None and current.shape == arr.shape and np.array_equal(current, arr):
            report.labels_unchanged += 1
            return
        datasets.put_label(tenant, dataset_id, image_id, encode_label_map(arr))
        report.labels_written += 1
    except VPLabError as e:
        report.errors.append({"entry": file, "error": e.message})
