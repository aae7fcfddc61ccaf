"""Writing miniworld images to disk, and contact sheets for the docs.

Layout of ``vplab miniworld render DOMAIN DIR``::

    DIR/images/NAME.png              RGB image
    DIR/masks/CLASS/NAME.png         binary mask (0/255) of each class, e.g. masks/polyp/
    DIR/masks/labels/NAME.png        class-id label map (0 = background; top-most object)
    DIR/masks/instances/NAME.png     instance-id map (0 = background; uint16 if > 255)

so ``vplab train --images DIR/images --labels DIR/masks/polyp`` works as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vplab.images import encode_png
from vplab.masks.png import encode_binary_mask, encode_label_map
from vplab.miniworld.domains import Sample, render


def _atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_sample(out: Path, name: str, s: Sample) -> None:
    _atomic(out / "images" / f"{name}.png", encode_png(s.image))
    for c, cls in enumerate(s.classes, start=1):
        _atomic(out / "masks" / cls / f"{name}.png", encode_binary_mask(s.mask(c)))
    _atomic(out / "masks" / "labels" / f"{name}.png", encode_label_map(s.label_map))
    _atomic(out / "masks" / "instances" / f"{name}.png", encode_label_map(s.instances))


def write_domain(
    domain: str, out_dir: str | Path, n: int, seed: int = 0, start: int = 0
) -> list[str]:
    if n <= 0:
        raise ValueError("n must be positive")
    out = Path(out_dir)
    names = []
    for i in range(start, start + n):
        name = f"img_{i:03d}"
        write_sample(out, name, render(domain, seed, i))
        names.append(name)
    return names


def overlay(image: np.ndarray, mask: np.ndarray, colour=(0, 255, 0), alpha=0.45) -> np.ndarray:
    """The image with ``mask`` tinted and its outline drawn."""
    out = image.astype(np.float32).copy()
    m = np.asarray(mask, bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colour, np.float32)
    edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
    out[edge] = colour
    return out.astype(np.uint8)


def contact_sheet(domain: str, n: int = 4, seed: int = 0, scale: int = 2) -> np.ndarray:
    """Two rows: ``n`` images of ``domain`` and the same with the target class overlaid
    (every ``scale``-th pixel, to keep the docs small)."""
    samples = [render(domain, seed, i) for i in range(n)]
    top = np.concatenate([s.image for s in samples], 1)
    bottom = np.concatenate([overlay(s.image, s.mask(1)) for s in samples], 1)
    return np.concatenate([top, bottom], 0)[::scale, ::scale]


def click_figure(domain: str = "polyps", index: int = 0, models=("sam_tiny", "sam_mini")):
    """The demo's before/after: one centre click on image ``index`` of ``domain``, decoded
    by each model (best of the 3 multimask outputs by predicted IoU), side by side with
    the ground truth. Returns (figure, {model: IoU})."""
    from vplab.masks import iou
    from vplab.masks.geometry import deepest_point
    from vplab.models import build_sam
    from vplab.segmentation import PromptSegmenter

    s = render(domain, 0, index)
    target = max(s.instance_masks(), key=lambda m: m.sum())
    point = deepest_point(target)
    if point is None:
        raise ValueError(f"{domain} image {index} has no object to click")
    x, y = point
    panels, ious = [overlay(s.image, target, (0, 255, 0))], {}
    for name in models:
        seg = PromptSegmenter(build_sam(name))
        res = seg.decode(seg.embed(s.image), np.array([[x, y]]), np.array([1]))
        mask = res.masks[0, int(res.iou_predictions[0].argmax())].numpy()
        ious[name] = iou(mask, target)
        panel = overlay(s.image, mask, (255, 60, 60))
        yi, xi = int(y), int(x)
        panel[max(yi - 3, 0) : yi + 4, max(xi - 3, 0) : xi + 4] = (255, 255, 0)
        panels.append(panel)
    return np.concatenate(panels, 1), ious
