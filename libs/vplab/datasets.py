"""Datasets, images and versioned labels of one tenant (a library: services call it).

Layout (keys built by ``vplab.storage.keys``)::

    tenants/{t}/datasets/{d}.json                 metadata {id, name, created_at, classes}
    tenants/{t}/datasets/{d}/classes/{id}.json    a class appended or edited later {name, color}
    tenants/{t}/datasets/{d}/images/{sha256}      membership marker {filename, added_at}
    tenants/{t}/images/{sha256}                   image bytes, shared by the tenant's datasets
    tenants/{t}/labels/{d}/{sha256}/v{n}.png      label versions, n = 1, 2, ...

Rules:

* ``tenant`` is always the authenticated identity; every key is built under it, so
  another tenant's dataset, image or label is simply ``NotFound`` (never revealed).
* Bad input (unreadable image, decompression bomb, over a limit or quota, wrong label
  size, unknown ids) is rejected before anything is written.
* Membership is one marker object per image: concurrent ``add_image`` calls from
  several replicas never lose each other's images (no read-modify-write of a list).
* Image bytes are content-addressed (id = sha256 of the bytes), so re-uploading is
  idempotent. They are deleted when no dataset of the tenant references them any more.
  The protocol that keeps this safe without locks: ``add_image`` writes the marker
  *before* it checks/writes the bytes; the collector deletes the bytes and *then*
  re-lists the markers, restoring the bytes if a marker appeared meanwhile.
* Label versions: ``put_label`` creates ``v{latest+1}`` with the store's conditional
  create (S3 ``If-None-Match: *``; local ``link(2)``) and moves to the next number when
  another writer got there first: versions are unique and no accepted write is lost.
  Editors get optimistic concurrency through ``if_match`` (412 on a stale ETag).
* Classes have ids 1..K in creation order, never reused (classes are never removed).
  The dataset record holds the classes it was created with; a class appended later is a
  conditional create of ``classes/{K+1}.json`` (the next id when another writer took it),
  an edit overwrites ``classes/{id}.json`` (the last edit wins), and reading overlays the
  objects on the record. A label is a label map of values 0..K; in a one-class dataset
  any binary mask (one nonzero value, 1 or 255) is a label too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import secrets
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from vplab.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from vplab.images import decode_image, image_sha256, image_size
from vplab.masks import encode_label_map, read_label_png
from vplab.microscopy import select_channels, tiff_metadata
from vplab.settings import Settings
from vplab.storage import ArtifactStore, keys
from vplab.storage.create_only import CREATE_ONLY
from vplab.tenancy.limits import RequestLimits
from vplab.tenancy.quotas import Quotas

_MAX_NAME = 200
_MAX_FILENAME = 255
_GC_BATCH = 32
_MAX_CREATE_ATTEMPTS = 200  # label writers racing for v{n+1}; each loss moves one up


MAX_CLASSES = 1024
# Default class colours (Tableau 10), by id: the web app draws every class in a colour.
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class DatasetClass:
    id: int  # 1..K: the value of its pixels in label maps (0 = background)
    name: str
    color: str  # "#rrggbb"


@dataclass(frozen=True)
class Dataset:
    id: str
    name: str
    created_at: str
    classes: tuple[DatasetClass, ...] = ()  # ids 1..K; () only before get_dataset fills it
    # Multi-channel TIFFs: the channels (0-based) stored for each, 1 = grey, 2-3 = a
    # composite (vplab.microscopy.select_channels); None = the default rule.
    channels: tuple[int, ...] | None = None


DEFAULT_CLASSES = (DatasetClass(1, "object", _PALETTE[0]),)


@dataclass(frozen=True)
class ImageInfo:
    image_id: str
    filename: str | None
    added_at: str
    metadata: dict[str, Any] | None = None  # microscopy files: axes, dtype, OME sizes


@dataclass(frozen=True)
class Label:
    image_id: str
    version: int
    png: bytes  # canonical PNG: uint8 (or uint16) class ids, 0 = background

    @property
    def etag(self) -> str:
        """An HTTP entity tag of this version: changes with every save, even when an image
        is removed and re-added (its versions restart at 1, their contents differ)."""
        return f'"v{self.version}-{hashlib.sha256(self.png).hexdigest()[:16]}"'

    def label_map(self) -> np.ndarray:
        """(H, W) int32 class ids."""
        return read_label_png(self.png, what="label")

    def mask(self) -> np.ndarray:
        """(H, W) bool foreground (any nonzero class)."""
        return self.label_map() > 0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _tid(tenant: object) -> str:
    """A tenant id, or a ``Tenant`` from the authenticator (its ``.id``)."""
    tenant_id = getattr(tenant, "id", tenant)
    return keys.check_id(tenant_id, "tenant")


def _check_text(value: object, what: str, max_len: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string")
    value = value.strip()
    if len(value) > max_len or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidInput(f"{what} must be at most {max_len} printable characters")
    return value


def _check_color(color: object, class_id: int) -> str:
    if color is None:
        return _PALETTE[(class_id - 1) % len(_PALETTE)]
    if not isinstance(color, str) or not _COLOR.fullmatch(color):
        raise InvalidInput(f"class {class_id}: color must be '#rrggbb', got {color!r}")
    return color.lower()


MAX_CHANNEL = 63  # a channel index; far above any microscope's channel count


def _check_channels(channels: object) -> tuple[int, ...] | None:
    """``[c]`` (one channel: grey) or 2-3 distinct channels (a composite); ``[]`` -> None."""
    if channels is None:
        return None
    if not isinstance(channels, (list, tuple)) or len(channels) > 3:
        raise InvalidInput(f"channels must be a list of 1 to 3 channel indices, got {channels!r}")
    if any(
        isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= MAX_CHANNEL for c in channels
    ):
        raise InvalidInput(f"channels must be integers 0..{MAX_CHANNEL}, got {list(channels)}")
    if len(set(channels)) != len(channels):
        raise InvalidInput(f"channels must be distinct, got {list(channels)}")
    return tuple(channels) or None


def _check_classes(classes: object) -> tuple[DatasetClass, ...]:
    """``[{name, color?}, ...]`` -> classes with ids 1..K (None: the one default class)."""
    if classes is None:
        return DEFAULT_CLASSES
    if not isinstance(classes, (list, tuple)) or not classes:
        raise InvalidInput("classes must be a non-empty list of {name, color?}")
    if len(classes) > MAX_CLASSES:
        raise InvalidInput(f"at most {MAX_CLASSES} classes, got {len(classes)}")
    out = []
    for i, c in enumerate(classes, start=1):
        if not isinstance(c, dict) or set(c) - {"name", "color"}:
            raise InvalidInput(f"class {i} must be {{name, color?}}, got {c!r}")
        out.append(
            DatasetClass(
                i,
                _check_text(c.get("name"), f"class {i} name", _MAX_NAME),
                _check_color(c.get("color"), i),
            )
        )
    _check_unique_names(out)
    return tuple(out)


def _check_unique_names(classes: list[DatasetClass] | tuple[DatasetClass, ...]) -> None:
    seen: dict[str, int] = {}
    for c in classes:
        if c.name.casefold() in seen:
            raise Conflict(f"class name {c.name!r} is used by class {seen[c.name.casefold()]}")
        seen[c.name.casefold()] = c.id


def _class_record(c: DatasetClass) -> dict[str, object]:
    return {"id": c.id, "name": c.name, "color": c.color}


def _class_from_record(record: dict) -> DatasetClass:
    return DatasetClass(int(record["id"]), str(record["name"]), str(record["color"]))


def _check_filename(filename: object) -> str | None:
    if filename is None:
        return None
    if not isinstance(filename, str):
        raise InvalidInput(f"filename must be a string, got {type(filename).__name__}")
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]  # metadata only; no paths
    if not base.strip():
        return None
    return _check_text(base, "filename", _MAX_FILENAME)


class DatasetStore:
    def __init__(self, store: ArtifactStore, settings: Settings, quotas: Quotas | None = None):
        self.store = store
        self.settings = settings
        self.quotas = quotas if quotas is not None else Quotas(store, settings)
        self.limits = RequestLimits(settings)

    # --- datasets ----------------------------------------------------------------------------

    def create_dataset(
        self,
        tenant: str,
        name: str,
        dataset_id: str | None = None,
        classes: list[dict[str, object]] | None = None,
        channels: list[int] | None = None,
    ) -> Dataset:
        """New dataset; its id is ``dataset_id`` (``Conflict`` if taken) or ``d-<12 hex>``.
        ``classes``: ``[{name, color?}]``, ids 1..K in this order (None: one class).
        ``channels``: see ``Dataset.channels``."""
        t = _tid(tenant)
        name = _check_text(name, "dataset name", _MAX_NAME)
        checked = _check_classes(classes)
        chosen = _check_channels(channels)
        reused_id = dataset_id is not None
        if dataset_id is None:
            dataset_id = f"d-{secrets.token_hex(6)}"
        record = keys.dataset(t, keys.check_id(dataset_id, "dataset id"))
        if self.store.exists(record):
            raise Conflict(f"dataset {dataset_id!r} already exists")
        if reused_id:  # leftovers of a deleted dataset of this id, deleted mid class append
            self.store.delete_prefix(keys.dataset_classes_prefix(t, dataset_id))
        ds = Dataset(id=dataset_id, name=name, created_at=_now(), classes=checked, channels=chosen)
        body: dict[str, Any] = {
            "id": ds.id,
            "name": ds.name,
            "created_at": ds.created_at,
            "classes": [_class_record(c) for c in ds.classes],
        }
        if chosen is not None:
            body["channels"] = list(chosen)
        self.store.put_json(record, body)
        return ds

    def get_dataset(self, tenant: str, dataset_id: str) -> Dataset:
        t = _tid(tenant)
        try:
            data = self.store.get_json(keys.dataset(t, keys.check_id(dataset_id, "dataset id")))
        except NotFound:
            raise NotFound(f"dataset {dataset_id!r} not found") from None
        if not isinstance(data, dict):
            raise InvalidInput(f"dataset record {dataset_id!r} is corrupt")
        base = Dataset(
            id=dataset_id,
            name=str(data.get("name", dataset_id)),
            created_at=str(data.get("created_at", "")),
            channels=tuple(data["channels"]) if data.get("channels") else None,
        )
        by_id = {c.id: c for c in DEFAULT_CLASSES}  # records from before classes: one class
        if isinstance(data.get("classes"), list):
            by_id = {int(c["id"]): _class_from_record(c) for c in data["classes"]}
        for key in self.store.list(keys.dataset_classes_prefix(t, dataset_id)):
            class_id = keys.parse_dataset_class(key, t, dataset_id)
            if class_id is None:
                continue
            with contextlib.suppress(NotFound):
                by_id[class_id] = _class_from_record(self.store.get_json(key))
        return replace(base, classes=tuple(by_id[i] for i in sorted(by_id)))

    def update_dataset(
        self,
        tenant: str,
        dataset_id: str,
        name: str | None = None,
        classes: list[dict[str, object]] | None = None,
        channels: list[int] | None = None,
    ) -> Dataset:
        """Rename the dataset; edit classes (``{id, name?, color?}``) and append classes
        (``{name, color?}``: the next ids); set ``channels`` (``[]``: back to the default
        rule; images already stored keep theirs). Everything is checked before anything is
        written."""
        t = _tid(tenant)
        ds = self.get_dataset(t, dataset_id)
        new_name = None if name is None else _check_text(name, "dataset name", _MAX_NAME)
        new_channels = None if channels is None else _check_channels(channels)
        if classes is not None and not isinstance(classes, (list, tuple)):
            raise InvalidInput("classes must be a list of {id, name?, color?} or {name, color?}")
        current = {c.id: c for c in ds.classes}
        edits: dict[int, DatasetClass] = {}
        appends: list[tuple[str, object]] = []
        for c in classes or ():
            if not isinstance(c, dict) or set(c) - {"id", "name", "color"}:
                raise InvalidInput(f"a class edit must be {{id?, name?, color?}}, got {c!r}")
            if "id" in c:
                class_id = c["id"]
                if not isinstance(class_id, int) or isinstance(class_id, bool):
                    raise InvalidInput(f"class id must be an integer, got {class_id!r}")
                if class_id not in current:
                    raise NotFound(
                        f"dataset {dataset_id!r} has no class {class_id} (ids 1..{len(current)})"
                    )
                old = edits.get(class_id, current[class_id])  # edited twice: the last wins
                edits[class_id] = DatasetClass(
                    class_id,
                    old.name
                    if c.get("name") is None
                    else _check_text(c["name"], f"class {class_id} name", _MAX_NAME),
                    old.color if c.get("color") is None else _check_color(c["color"], class_id),
                )
            else:
                appends.append(
                    (_check_text(c.get("name"), "new class name", _MAX_NAME), c.get("color"))
                )
        if len(current) + len(appends) > MAX_CLASSES:
            raise Conflict(
                f"dataset {dataset_id!r} has {len(current)} classes: {len(appends)} more would "
                f"exceed {MAX_CLASSES}"
            )
        merged = {**current, **edits}
        next_id = max(merged) + 1
        preview = list(merged.values()) + [
            DatasetClass(next_id + i, n, _check_color(col, next_id + i))
            for i, (n, col) in enumerate(appends)
        ]
        _check_unique_names(preview)
        # Writes: the record (name), each edit (last wins), each append (its own new id).
        if new_name is not None or channels is not None:
            record = self.store.get_json(keys.dataset(t, dataset_id))
            if new_name is not None:
                record["name"] = new_name
            if channels is not None:
                record.pop("channels", None)
                if new_channels is not None:
                    record["channels"] = list(new_channels)
            self.store.put_json(keys.dataset(t, dataset_id), record)
        for edited in edits.values():
            self.store.put_json(keys.dataset_class(t, dataset_id, edited.id), _class_record(edited))
        for class_name, color in appends:
            self._append_class(t, dataset_id, max(current), class_name, color)
        return self.get_dataset(t, dataset_id)

    def _append_class(
        self, t: str, dataset_id: str, record_max: int, name: str, color: object
    ) -> int:
        """Create the class object of the next free id. Appends only add objects (the record's
        classes never change), so the next id is above the record's and every listed one."""
        prefix = keys.dataset_classes_prefix(t, dataset_id)
        for _ in range(_MAX_CREATE_ATTEMPTS):
            listed = (keys.parse_dataset_class(k, t, dataset_id) for k in self.store.list(prefix))
            class_id = max([record_max, *(i for i in listed if i is not None)]) + 1
            c = DatasetClass(class_id, name, _check_color(color, class_id))
            body = json.dumps(_class_record(c)).encode()
            if self.store.create_bytes(
                keys.dataset_class(t, dataset_id, class_id), body, content_type="application/json"
            ):
                return class_id
            time.sleep(random.uniform(0, 0.01))  # another writer took this id: the next
        raise Conflict(f"dataset {dataset_id}: too many concurrent class appends, try again")

    def list_datasets(self, tenant: str) -> list[Dataset]:
        t = _tid(tenant)
        out = []
        for key in self.store.list(keys.datasets_prefix(t)):
            dataset_id = keys.parse_dataset_record(key, t)
            if dataset_id is None:
                continue  # a membership marker
            with contextlib.suppress(NotFound):  # deleted meanwhile
                out.append(self.get_dataset(t, dataset_id))
        return sorted(out, key=lambda d: (d.created_at, d.id))

    def delete_dataset(self, tenant: str, dataset_id: str) -> None:
        """Delete the dataset, its markers and labels, and images no dataset still uses."""
        t = _tid(tenant)
        self.get_dataset(t, dataset_id)
        shas = self.list_images(t, dataset_id)
        # Record first: from here on the dataset is NotFound for every caller.
        self.store.delete(keys.dataset(t, dataset_id))
        self.store.delete_prefix(keys.dataset_objects_prefix(t, dataset_id))
        self.store.delete_prefix(keys.dataset_labels_prefix(t, dataset_id))
        self._collect_images(t, shas)

    # --- images ------------------------------------------------------------------------------

    def add_image(
        self, tenant: str, dataset_id: str, data: bytes, filename: str | None = None
    ) -> str:
        """Store an image in a dataset; return its id (the sha256 of the stored bytes:
        ``data``, or for a TIFF in a dataset with a ``channels`` setting, the TIFF of those
        channels).

        Decoded under the request limits and quota-checked before anything is written.
        Re-uploading the same bytes is idempotent (same id, nothing changes).
        """
        return self.put_image(tenant, dataset_id, data, filename)[0]

    def put_image(
        self, tenant: str, dataset_id: str, data: bytes, filename: str | None = None
    ) -> tuple[str, bool]:
        """``add_image``, and whether the image is new to the dataset."""
        t = _tid(tenant)
        filename = _check_filename(filename)
        ds = self.get_dataset(t, dataset_id)
        limits = (self.settings.max_image_bytes, self.settings.max_image_pixels)
        decode_image(data, *limits)
        data = bytes(data)
        meta = tiff_metadata(data)
        if meta is not None and ds.channels is not None:
            source = image_sha256(data)
            data = select_channels(data, ds.channels, *limits)
            meta |= {"channels": list(ds.channels), "source_sha256": source}
        sha = image_sha256(data)
        image_key = keys.image(t, sha)
        marker = keys.dataset_image(t, dataset_id, sha)

        had_bytes = self.store.exists(image_key)
        had_marker = self.store.exists(marker)
        room = contextlib.nullcontext() if had_bytes else self.quotas.reserve_image(t, len(data))
        with room:
            if not had_marker:
                record: dict[str, Any] = {"filename": filename, "added_at": _now()}
                if meta is not None:
                    record["metadata"] = meta
                self.store.put_json(marker, record)
            try:
                # After the marker (see the module docstring): a concurrent collector that
                # deleted the bytes either sees our marker and restores them, or we see
                # them gone here and write them.
                if not had_bytes or not self.store.exists(image_key):
                    self.store.put_bytes(image_key, data)
            except BaseException:
                if not had_marker:
                    with contextlib.suppress(Exception):
                        self.store.delete(marker)
                raise
        return sha, not had_marker

    def list_images(self, tenant: str, dataset_id: str) -> list[str]:
        """Image ids (sha256) in the dataset, sorted."""
        t = _tid(tenant)
        self.get_dataset(t, dataset_id)
        prefix = keys.dataset_images_prefix(t, dataset_id)
        return sorted(
            parsed[1]
            for parsed in (keys.parse_dataset_image(k, t) for k in self.store.list(prefix))
            if parsed is not None and parsed[0] == dataset_id
        )

    def image_in_dataset(self, tenant: str, dataset_id: str, image_id: str) -> bool:
        """Whether the image is in the dataset; ``NotFound`` for an unknown dataset."""
        t = _tid(tenant)
        self.get_dataset(t, dataset_id)
        return self.store.exists(keys.dataset_image(t, dataset_id, _image_id(image_id)))

    def image_info(self, tenant: str, dataset_id: str, image_id: str) -> ImageInfo:
        t = _tid(tenant)
        self.get_dataset(t, dataset_id)
        try:
            data = self.store.get_json(keys.dataset_image(t, dataset_id, _image_id(image_id)))
        except NotFound:
            raise NotFound(f"image {image_id} not found in dataset {dataset_id!r}") from None
        data = data if isinstance(data, dict) else {}
        meta = data.get("metadata")
        return ImageInfo(
            image_id=image_id,
            filename=data.get("filename"),
            added_at=str(data.get("added_at", "")),
            metadata=meta if isinstance(meta, dict) else None,
        )

    def get_image_bytes(self, tenant: str, image_id: str) -> bytes:
        t = _tid(tenant)
        try:
            return self.store.get_bytes(keys.image(t, _image_id(image_id)))
        except NotFound:
            raise NotFound(f"image {image_id} not found") from None

    def get_image(self, tenant: str, image_id: str) -> np.ndarray:
        """Decoded (H, W, 3) uint8 RGB (EXIF orientation applied)."""
        return decode_image(
            self.get_image_bytes(tenant, image_id),
            self.settings.max_image_bytes,
            self.settings.max_image_pixels,
        )

    def image_shape(self, tenant: str, image_id: str) -> tuple[int, int]:
        """(H, W) of ``get_image``, from the header (no pixels decoded, except a TIFF's)."""
        return image_size(
            self.get_image_bytes(tenant, image_id),
            self.settings.max_image_bytes,
            self.settings.max_image_pixels,
        )

    def remove_image(self, tenant: str, dataset_id: str, image_id: str) -> None:
        """Remove the image (and its labels) from the dataset; its bytes go when no other
        dataset of the tenant uses them. ``NotFound`` if it is not in the dataset."""
        t = _tid(tenant)
        sha = self._require_member(t, dataset_id, image_id)
        self.store.delete_prefix(keys.image_labels_prefix(t, dataset_id, sha))
        self.store.delete(keys.dataset_image(t, dataset_id, sha))
        self._collect_images(t, [sha])

    def visual_prompt_targets(
        self,
        tenant: str,
        dataset_id: str,
        reference_ids: list[str],
        targets: list[str] | None = None,
        per_call_limits: bool = True,
    ) -> list[str]:
        """The images a visual-prompt call segments, checked against the dataset.

        References and explicit targets must be images of the dataset (``NotFound``
        otherwise, like any unknown id); ``targets`` None or empty means every image of
        the dataset that is not a reference. The request limits apply to the references
        and to the resolved targets (the whole-dataset default too: pass batches), unless
        ``per_call_limits`` is False (a prediction run: a job, not one call).
        """
        t = _tid(tenant)
        self.limits.check_references(len(reference_ids))
        if not reference_ids:
            raise InvalidInput("give at least one reference")
        for i, ref in enumerate(reference_ids):
            keys.check_sha256(ref, f"references[{i}].image_id")
        if targets:
            if per_call_limits:
                self.limits.check_targets(len(targets))
            for i, target in enumerate(targets):
                keys.check_sha256(target, f"targets[{i}]")
        members = self.list_images(t, dataset_id)
        member_set = set(members)
        for image_id in [*reference_ids, *(targets or ())]:
            if image_id not in member_set:
                raise NotFound(f"image {image_id} not found in dataset {dataset_id}")
        if targets:
            resolved = list(targets)
        else:
            refs = set(reference_ids)
            resolved = [i for i in members if i not in refs]
        if per_call_limits:
            self.limits.check_targets(len(resolved))
        if not resolved:
            raise InvalidInput("no target images: the dataset has no images besides the references")
        return resolved

    # --- labels ------------------------------------------------------------------------------

    def put_label(
        self,
        tenant: str,
        dataset_id: str,
        image_id: str,
        png_bytes: bytes,
        if_match: str | None = None,
        if_none_match: str | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Label:
        """Store a new label version for an image of the dataset; return it (version 1, 2...).

        The PNG must be a binary mask or label map of exactly the image's size (the size
        after EXIF orientation, i.e. what ``get_image`` returns). Versions are unique under
        any number of concurrent writers: each one is a conditional create of ``v{n+1}``,
        retried on the next number when another writer took it, so no correction is lost.
        Editors pass ``if_match`` (the ``etag`` of the label they edited, or ``*``: "some
        label exists"): if another version was saved meanwhile, ``PreconditionFailed`` and
        nothing is written. ``if_none_match="*"``: only if the image has no label yet.
        ``provenance``: where the version came from (an accepted prediction: run, model,
        accepted / edited), stored beside it; a version without one was drawn by hand.
        """
        t = _tid(tenant)
        ds, sha = self._member(t, dataset_id, image_id)
        arr = read_label_png(
            png_bytes, self.settings.max_image_bytes, self.settings.max_image_pixels
        )
        _check_label_values(arr, ds)
        height, width = self.image_shape(t, sha)
        if arr.shape != (height, width):
            raise InvalidInput(
                f"label is {arr.shape[1]}x{arr.shape[0]} (WxH) but image {sha} is "
                f"{width}x{height}; they must match"
            )
        if if_none_match not in (None, "*"):
            raise InvalidInput('If-None-Match on a label must be "*" (no label yet)')
        canonical = encode_label_map(arr)
        prefix = keys.image_labels_prefix(t, dataset_id, sha)
        for _ in range(_MAX_CREATE_ATTEMPTS):
            latest = keys.latest_label_version(self.store.list(prefix)) or 0
            if if_none_match is not None and latest:
                raise PreconditionFailed(f"image {sha} already has a label (v{latest})")
            if if_match is not None:
                self._check_if_match(t, dataset_id, sha, latest, if_match)
            version = latest + 1
            key = keys.label(t, dataset_id, sha, version)
            if self.store.create_bytes(key, canonical, content_type="image/png"):
                if provenance is not None:
                    # After the version: a writer dying in between leaves a hand-drawn label.
                    self.store.put_json(
                        keys.label_provenance(t, dataset_id, sha, version), provenance
                    )
                return Label(image_id=sha, version=version, png=canonical)
            if if_match is not None or if_none_match is not None:
                raise PreconditionFailed(
                    f"label v{version} of image {sha} was saved by someone else meanwhile"
                )
            time.sleep(random.uniform(0, 0.01))  # another writer took v{n}: try v{n+1}
        raise Conflict(f"image {sha}: too many concurrent label writes, try again")

    def _check_if_match(
        self, t: str, dataset_id: str, sha: str, latest: int, if_match: str
    ) -> None:
        tags = [tag.strip() for tag in if_match.split(",") if tag.strip()]
        if "*" in tags:
            if not latest:
                raise PreconditionFailed(f"image {sha} has no label yet (If-Match: *)")
            return
        current = self.get_label(t, dataset_id, sha, latest).etag if latest else None
        if current is None or current not in [tag.removeprefix("W/") for tag in tags]:
            raise PreconditionFailed(
                f"the label of image {sha} changed meanwhile (now "
                f"{f'v{latest}' if latest else 'none'}): reload it before saving"
            )

    def get_label(
        self, tenant: str, dataset_id: str, image_id: str, version: int | None = None
    ) -> Label:
        """A label version (latest if ``version`` is None); ``NotFound`` if absent."""
        t = _tid(tenant)
        sha = self._require_member(t, dataset_id, image_id)
        if version is None:
            version = keys.latest_label_version(
                self.store.list(keys.image_labels_prefix(t, dataset_id, sha))
            )
            if version is None:
                raise NotFound(f"image {sha} has no label in dataset {dataset_id!r}")
        elif isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidInput(f"label version must be an integer >= 1, got {version!r}")
        try:
            png = self.store.get_bytes(keys.label(t, dataset_id, sha, version))
        except NotFound:
            raise NotFound(f"label version {version} of image {sha} not found") from None
        return Label(image_id=sha, version=version, png=png)

    def label_provenance(
        self, tenant: str, dataset_id: str, image_id: str, version: int
    ) -> dict[str, Any]:
        """Where a label version came from: ``{"source": "manual"}`` unless it was an
        accepted prediction (then ``run_id``, ``model_id``, ``source`` accepted / edited)."""
        t = _tid(tenant)
        try:
            record = CREATE_ONLY.get(
                self.store, keys.label_provenance(t, dataset_id, image_id, version)
            )
        except NotFound:
            return {"source": "manual"}
        return record if isinstance(record, dict) else {"source": "manual"}

    def list_labels(self, tenant: str, dataset_id: str) -> dict[str, int]:
        """``{image_id: latest label version}`` for the labelled images of the dataset."""
        return {sha: v for sha, (v, _) in self._latest_label_keys(tenant, dataset_id).items()}

    def latest_labels(self, tenant: str, dataset_id: str) -> dict[str, tuple[int, dict[str, Any]]]:
        """``{image_id: (latest label version, its provenance)}`` from one listing; each
        provenance record is read once per process (it never changes once written)."""
        t = _tid(tenant)
        out = {}
        for sha, (version, has_provenance) in self._latest_label_keys(t, dataset_id).items():
            provenance: dict[str, Any] = {"source": "manual"}
            if has_provenance:
                try:
                    key = keys.label_provenance(t, dataset_id, sha, version)
                    record = CREATE_ONLY.get(self.store, key)
                    provenance = record if isinstance(record, dict) else provenance
                except NotFound:  # removed meanwhile
                    pass
            out[sha] = (version, provenance)
        return out

    def _latest_label_keys(self, tenant: str, dataset_id: str) -> dict[str, tuple[int, bool]]:
        """``{image_id: (latest version, whether a provenance record is beside it)}``."""
        t = _tid(tenant)
        members = set(self.list_images(t, dataset_id))
        listed = set(self.store.list(keys.dataset_labels_prefix(t, dataset_id)))
        latest: dict[str, int] = {}
        for key in listed:
            parsed = keys.parse_label(key, t)
            if parsed is None or parsed[0] != dataset_id or parsed[1] not in members:
                continue
            _, sha, v = parsed
            latest[sha] = max(v, latest.get(sha, 0))
        return {
            sha: (v, keys.label_provenance(t, dataset_id, sha, v) in listed)
            for sha, v in sorted(latest.items())
        }

    def labeled_samples(
        self, tenant: str, dataset_id: str, label_maps: bool = False
    ) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """``[(image_id, (H, W, 3) uint8 image, (H, W) bool label)]``, latest labels,
        sorted by image id (``label_maps``: the labels as int class-id maps). Images
        removed concurrently are skipped."""
        t = _tid(tenant)
        samples = []
        for sha, version in self.list_labels(t, dataset_id).items():
            try:
                image = self.get_image(t, sha)
                png = self.store.get_bytes(keys.label(t, dataset_id, sha, version))
                stored = Label(image_id=sha, version=version, png=png)
                label = stored.label_map() if label_maps else stored.mask()
            except NotFound:
                continue
            if label.shape != image.shape[:2]:
                raise InvalidInput(f"label of image {sha} does not match the image size")
            samples.append((sha, image, label))
        return samples

    # --- internals -----------------------------------------------------------------------------

    def _require_member(self, t: str, dataset_id: str, image_id: str) -> str:
        return self._member(t, dataset_id, image_id)[1]

    def _member(self, t: str, dataset_id: str, image_id: str) -> tuple[Dataset, str]:
        """(the dataset, the image's sha256) if the image is in the dataset, else NotFound."""
        ds = self.get_dataset(t, dataset_id)
        sha = _image_id(image_id)
        if not self.store.exists(keys.dataset_image(t, dataset_id, sha)):
            raise NotFound(f"image {image_id} not found in dataset {dataset_id!r}")
        return ds, sha

    def _referenced_images(self, t: str) -> set[str]:
        return {
            parsed[1]
            for parsed in (
                keys.parse_dataset_image(k, t) for k in self.store.list(keys.datasets_prefix(t))
            )
            if parsed is not None
        }

    def _collect_images(self, t: str, shas: list[str]) -> None:
        """Delete image bytes no dataset references (see the module docstring)."""
        if not shas:
            return
        for start in range(0, len(shas), _GC_BATCH):
            batch = shas[start : start + _GC_BATCH]
            referenced = self._referenced_images(t)
            deleted: list[tuple[str, bytes]] = []
            for sha in batch:
                if sha in referenced:
                    continue
                try:
                    data = self.store.get_bytes(keys.image(t, sha))
                except NotFound:
                    continue
                self.store.delete(keys.image(t, sha))
                deleted.append((sha, data))
            if deleted:
                referenced = self._referenced_images(t)
                for sha, data in deleted:
                    if sha in referenced:  # an add_image raced us: put the bytes back
                        self.store.put_bytes(keys.image(t, sha), data)
        self.quotas.forget_usage(t)


def _check_label_values(arr: np.ndarray, ds: Dataset) -> None:
    """A label map's values must be class ids 0..K; a one-class dataset takes any binary
    mask (a single nonzero value: 1, 255, ...)."""
    values = np.unique(arr)
    nonzero = values[values > 0]
    k = len(ds.classes)
    if k == 1:
        if len(nonzero) > 1:
            shown = ", ".join(map(str, nonzero[:5].tolist()))
            raise InvalidInput(
                f"label has {len(nonzero)} different nonzero values ({shown}...) but dataset "
                f"{ds.id!r} has 1 class: give a binary mask, or add classes to the dataset"
            )
        return
    above = nonzero[nonzero > k]
    if len(above):
        shown = ", ".join(map(str, above[:5].tolist()))
        raise InvalidInput(
            f"label value {shown} is above the dataset's {k} classes (ids 1..{k}, 0 = background)"
        )


def _image_id(image_id: object) -> str:
    return keys.check_sha256(image_id, "image id")
