"""The demo dataset a new user (and the tests) can run everything on at once.

``vplab demo-data DIR`` writes miniworld images (docs/MINIWORLD.md) of one target domain
(default ``DEMO_DOMAIN``): ``DIR/images/img_000.png``... and ``DIR/masks/img_000.png``, the
binary mask (0/255) of the domain's target class. The embedded ``sam_mini`` segments a
click on them well; 0-shot visual prompting is visibly imperfect, and 5 tuned shots help.

``domain="cells"`` is the pre-miniworld synthetic task (bright elliptical "cells" as the
target, dark squares as distractors); ``load_demo_samples`` keeps returning it, because
mechanics tests and timing benchmarks only need fixed images, not meaningful content.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vplab.images import encode_png


def make_sample(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One (image HxWx3 uint8, target mask HxW bool) pair."""
    image, cells, _ = make_scene(rng, size)
    return image, np.any(cells, axis=0) if cells else np.zeros((size, size), bool)


def make_scene(
    rng: np.random.Generator, size: int = 256
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(image, cell instance masks, distractor-square instance masks): every object, one
    mask each, for promptable (click -> instance) pretraining of the demo model."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Background: smooth gradient + noise, greenish-grey.
    base = 60 + 30 * np.sin(xx / rng.uniform(20, 40)) * np.cos(yy / rng.uniform(20, 40))
    image = np.stack([base * 0.8, base, base * 0.9], axis=-1)
    image += rng.normal(0, 8, size=image.shape)

    # Distractors first so cells may overlap them (cells win).
    squares = []
    for _ in range(rng.integers(1, 3)):
        s = rng.integers(size // 10, size // 6)
        x0, y0 = rng.integers(0, size - s, size=2)
        image[y0 : y0 + s, x0 : x0 + s] = (40, 40, 160)
        square = np.zeros((size, size), dtype=bool)
        square[y0 : y0 + s, x0 : x0 + s] = True
        squares.append(square)

    cells = []
    for _ in range(rng.integers(2, 5)):
        cx, cy = rng.uniform(0.15 * size, 0.85 * size, size=2)
        a, b = rng.uniform(0.06 * size, 0.12 * size, size=2)
        theta = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        cell = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        shade = 1.0 - 0.3 * ((u / a) ** 2 + (v / b) ** 2)  # brighter centre, like a nucleus
        image[cell] = np.stack([230 * shade, 180 * shade, 90 * shade], axis=-1)[cell]
        cells.append(cell)

    image = np.clip(image + rng.normal(0, 4, size=image.shape), 0, 255).astype(np.uint8)
    covered = np.any(cells, axis=0)
    squares = [q & ~covered for q in squares]
    return image, cells, [q for q in squares if q.any()]


DEMO_DOMAIN = "polyps"
LEGACY_DOMAIN = "cells"


def miniworld_sample(
    domain: str, seed: int, index: int, size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(image, target-class mask) of miniworld image ``index``, resized to ``size`` px.

    Miniworld draws at 256 px (object sizes are in pixels); other sizes are a resize of
    that image (bilinear) and mask (nearest), so ``--size`` changes resolution, not content.
    """
    from PIL import Image

    from vplab.miniworld import render

    s = render(domain, seed, index)
    image, mask = s.image, s.mask(1)
    if size != image.shape[0]:
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
    return image, mask.astype(bool)


def write_demo_dataset(
    out_dir: str | Path, n: int = 8, size: int = 256, seed: int = 0, domain: str = DEMO_DOMAIN
) -> list[str]:
    """Write ``n`` samples to ``out_dir/images`` and ``out_dir/masks``; returns the names."""
    if n <= 0:
        raise ValueError("n must be positive")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        if domain == LEGACY_DOMAIN:
            image, mask = make_sample(rng, size)
        else:
            image, mask = miniworld_sample(domain, seed, i, size)
        name = f"img_{i:03d}"
        _write_atomic(out / "images" / f"{name}.png", encode_png(image))
        _write_atomic(out / "masks" / f"{name}.png", encode_png(mask.astype(np.uint8) * 255))
        names.append(name)
    return names


def load_demo_samples(
    n: int = 8, size: int = 256, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The legacy synthetic "cells" samples (``write_demo_dataset(domain="cells")``), in
    memory: fixed images for mechanics tests and timing benchmarks."""
    rng = np.random.default_rng(seed)
    return [make_sample(rng, size) for _ in range(n)]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
