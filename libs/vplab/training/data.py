"""Labelled images for training: loading a folder pair and validating it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vplab.errors import InvalidInput

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclass
class LabeledImage:
    name: str
    image: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) bool, the target class
    # The image this sample shows, when several samples share it (one per class of a
    # multi-class label: ``per_class_samples``); default: ``name``. Names its cached
    # embeddings.
    image_key: str = ""
    # The dataset image a tile of a large image comes from (``tile_samples``).
    origin: str = ""

    @property
    def key(self) -> str:
        return self.image_key or self.name

    @property
    def source(self) -> str:
        """The dataset image this sample is (a tile of): what it was trained on."""
        return self.origin or self.key


def per_class_samples(
    image_id: str, image: np.ndarray, label_map: np.ndarray, classes: int
) -> list[LabeledImage]:
    """A label of a ``classes``-class dataset as training samples: the image's own id when
    there is one class; else one binary sample per class present (``{id}.c{k}``), so one
    adapter learns every class with the prompts visual prompting sends for each (a
    positive on that class, negatives off it) and that class's mask as the target."""
    present = sorted(int(v) for v in np.unique(label_map) if v > 0)
    if classes <= 1 or not present:  # an empty label still teaches "nothing here"
        return [LabeledImage(image_id, image, label_map > 0)]
    return [
        LabeledImage(f"{image_id}.c{k}", image, label_map == k, image_key=image_id) for k in present
    ]


def tile_samples(samples: list[LabeledImage], window: int, halo: int) -> list[LabeledImage]:
    """Samples larger than the encoder's input (``window``) as one sample per tile window,
    at the image's resolution - what the served tiles embed (vplab.segmentation.tiling);
    the others as they are. Only tiles whose core holds a labelled pixel are kept (all of
    them when none does: an empty label teaches "nothing here"). A tile's ``image_key``
    is derived from its image's and its window (its own embedding cache entry)."""
    from vplab.segmentation.tiling import crop, needs_tiling, tile_grid

    out: list[LabeledImage] = []
    for s in samples:
        H, W = s.label.shape
        if not needs_tiling(H, W, window):
            out.append(s)
            continue
        tiles = tile_grid(H, W, window, halo)
        labelled = [t for t in tiles if crop(s.label, t.core).any()] or tiles
        for t in labelled:
            i = tiles.index(t)
            key = hashlib.sha256(f"{s.key}:{list(t.window)}".encode()).hexdigest()
            out.append(
                LabeledImage(
                    f"{s.name}.t{i}",
                    crop(s.image, t.window),
                    crop(s.label, t.window),
                    image_key=key,
                    origin=s.source,
                )
            )
    return out


def validate_samples(samples: list[LabeledImage]) -> None:
    if not samples:
        raise InvalidInput("the label set is empty: at least one labelled image is needed")
    for s in samples:
        if s.image.ndim != 3 or s.image.shape[2] != 3:
            raise InvalidInput(f"image {s.name!r} must be H x W x 3, got {s.image.shape}")
        if s.label.shape != s.image.shape[:2]:
            raise InvalidInput(
                f"label of {s.name!r} is {s.label.shape[1]}x{s.label.shape[0]} but the image is "
                f"{s.image.shape[1]}x{s.image.shape[0]}"
            )
    if not any(s.label.any() for s in samples):
        raise InvalidInput("every label is empty: nothing to learn")


def load_labeled_dir(images_dir: str | Path, labels_dir: str | Path) -> list[LabeledImage]:
    """Pair ``images_dir/NAME.*`` with ``labels_dir/NAME.png`` (label > 0 is foreground).

    Every label must have an image; images without a label are ignored (unlabelled).
    """
    from vplab.images import read_image
    from vplab.masks import read_binary_mask

    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for d, what in ((images_dir, "images"), (labels_dir, "labels")):
        if not d.is_dir():
            raise InvalidInput(f"{what} directory {str(d)!r} does not exist")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    labels = {p.stem: p for p in sorted(labels_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not labels:
        raise InvalidInput(f"no label files in {str(labels_dir)!r}: the label set is empty")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise InvalidInput(f"labels without a matching image in {str(images_dir)!r}: {orphans[:5]}")
    samples = [
        LabeledImage(name, read_image(images[name]), read_binary_mask(labels[name]))
        for name in sorted(labels)
    ]
    validate_samples(samples)
    return samples


# Below this many labelled images every one of them trains: holding out 1 of 5 shots would
# make "5-shot" train on 4 (#12), and one held-out image is too few to choose a checkpoint.
MIN_IMAGES_FOR_HOLDOUT = 10


def split_train_val(
    samples: list[LabeledImage],
    val_fraction: float,
    seed: int,
    min_images: int = MIN_IMAGES_FOR_HOLDOUT,
) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """Hold out ``round(n * val_fraction)`` images (at least 1) when there are at least
    ``min_images``; with fewer, all train and the validation split is empty. Images, not
    samples: the samples of one image (its classes, its tiles) land on the same side."""
    images = list(dict.fromkeys(s.source for s in samples))
    n = len(images)
    if val_fraction <= 0 or n < max(2, min_images):
        return list(samples), []
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    held_out = {images[i] for i in order[:n_val]}
    val = [s for s in samples if s.source in held_out]
    train = [s for s in samples if s.source not in held_out]
    return train, val
