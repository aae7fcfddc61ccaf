"""The domains of miniworld (QUALITY.md): one source domain, six target domains, one dev domain.

``render(domain, seed, index)`` is a pure function: the generator is seeded from
(crc32(domain), seed, index) only, so the same triple gives the same image and masks on
every machine. Class id 1 of every target/dev domain is its target class (the structure
the paper's dataset labels); the source domain's classes are its six object families.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vplab.miniworld import draw
from vplab.miniworld.draw import F32, Canvas

SIZE = 256


@dataclass
class Sample:
    """One rendered image with its ground truth.

    image: (H, W, 3) uint8. instances: (H, W) int32, 0 = background, i = i-th instance
    (the top-most one where objects overlap). instance_class: (N + 1,) int, the class id of
    each instance (index 0 = background = 0). class_masks: (K, H, W) bool, class c at
    index c - 1 (classes of translucent structures may overlap).
    """

    domain: str
    seed: int
    index: int
    image: np.ndarray
    instances: np.ndarray
    instance_class: np.ndarray
    class_masks: np.ndarray
    classes: tuple[str, ...]

    def mask(self, class_id: int = 1) -> np.ndarray:
        """Binary (H, W) mask of one class (default: the target class)."""
        return self.class_masks[class_id - 1]

    @property
    def label_map(self) -> np.ndarray:
        """(H, W) uint8 class id of the top-most instance per pixel (0 = background)."""
        return self.instance_class[self.instances].astype(np.uint8)

    def instance_masks(self, min_area: int = 1) -> list[np.ndarray]:
        counts = np.bincount(self.instances.ravel(), minlength=len(self.instance_class))
        return [self.instances == i for i in range(1, len(counts)) if counts[i] >= min_area]


class Scene:
    """Objects painted in order; later objects occlude earlier ones."""

    def __init__(self, rng: np.random.Generator, size: int, classes: tuple[str, ...]):
        self.rng = rng
        self.cv = Canvas(size, size)
        self.image = np.zeros((size, size, 3), F32)
        self.classes = classes
        self.objects: list[tuple[np.ndarray, int, bool]] = []  # (mask, class id, opaque)

    def add(
        self,
        mask: np.ndarray,
        class_id: int,
        colour,
        field=None,
        contrast=0.0,
        alpha=1.0,
        opaque: bool = True,
    ) -> None:
        if not mask.any():
            return
        draw.paint(self.image, mask, np.asarray(colour, F32), field, contrast, alpha)
        if class_id > 0:
            self.objects.append((mask, class_id, opaque))

    def done(
        self,
        domain: str,
        seed: int,
        index: int,
        noise: float,
        blur: float,
        lighting=0.0,
        gamma=1.0,
        image: np.ndarray | None = None,
    ) -> Sample:
        h, w = self.cv.h, self.cv.w
        inst = np.zeros((h, w), np.int32)
        for i, (m, _, _) in enumerate(self.objects):
            inst[m] = i + 1
        inst_class = np.array([0] + [c for _, c, _ in self.objects], np.int64)
        class_masks = np.zeros((len(self.classes), h, w), bool)
        for i, (m, c, opaque) in enumerate(self.objects):
            class_masks[c - 1] |= (inst == i + 1) if opaque else m
        # Renumber so ids are 1..N over instances that are still visible.
        visible = np.unique(inst)
        visible = visible[visible > 0]
        remap = np.zeros(len(self.objects) + 1, np.int32)
        remap[visible] = np.arange(1, visible.size + 1)
        inst = remap[inst]
        inst_class = np.concatenate([[0], inst_class[visible]])
        img = draw.finish(
            self.rng, self.image if image is None else image, noise, blur, lighting, gamma
        )
        return Sample(domain, seed, index, img, inst, inst_class, class_masks, self.classes)


def _rng(domain: str, seed: int, index: int) -> np.random.Generator:
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be >= 0")
    return np.random.default_rng(
        np.random.SeedSequence([zlib.crc32(domain.encode()), int(seed), int(index)])
    )


def _background(rng, cv: Canvas, colour, contrast, kind=None) -> np.ndarray:
    kind = kind or rng.choice(["noise", "gradient", "stripes", "checker", "flat", "noise"])
    field = draw.texture_field(rng, cv, kind, cv.w / 2, cv.h / 2)
    tint = draw.random_colour(rng, -1, 1)
    img = np.asarray(colour, F32) + contrast * field[..., None] * (1 + 0.3 * tint)
    return img.astype(F32)


# --- source --------------------------------------------------------------------------------

SOURCE_CLASSES = ("blob", "polygon", "ring", "rod", "star", "patch")


def _source(rng: np.random.Generator, size: int) -> Scene:
    sc = Scene(rng, size, SOURCE_CLASSES)
    cv = sc.cv
    sc.image = _background(rng, cv, draw.random_colour(rng, 30, 220), rng.uniform(5, 45))
    if rng.random() < 0.5:  # a second, coarse background layer (large-scale clutter)
        sc.image += rng.uniform(5, 30) * draw.fractal_noise(rng, size, size, 2, 3)[..., None]
    n = int(rng.integers(1, 31))
    r_max = float(np.clip(170 / np.sqrt(n), 16, 90))
    for _ in range(n):
        family = int(rng.integers(1, 7))
        r = float(np.exp(rng.uniform(np.log(8), np.log(r_max))))
        cx, cy = rng.uniform(-0.05 * size, 1.05 * size, size=2)
        theta = rng.uniform(0, np.pi)
        if family == 1:
            m = cv.place(cx, cy, 1.8 * r, draw.blob, rng, cx, cy, r)
        elif family == 2:
            m = cv.place(cx, cy, r, draw.polygon, rng, cx, cy, r)
        elif family == 3:
            b, t = r * rng.uniform(0.6, 1.0), rng.uniform(0.25, 0.6)
            m = cv.place(cx, cy, r, draw.ring, cx, cy, r, b, theta, t)
        elif family == 4:
            length = r * rng.uniform(1.5, 3.5)
            dx, dy = np.cos(theta) * length / 2, np.sin(theta) * length / 2
            hw = max(2.0, r * rng.uniform(0.1, 0.3))
            m = cv.place(
                cx,
                cy,
                length / 2 + hw,
                draw.rod,
                cx - dx,
                cy - dy,
                cx + dx,
                cy + dy,
                hw,
            )
        elif family == 5:
            m = cv.place(cx, cy, r, draw.star, rng, cx, cy, r)
        else:
            b = r * rng.uniform(0.4, 1.0)
            m = cv.place(cx, cy, 1.5 * r, draw.rect, cx, cy, r, b, theta)
        kind = str(rng.choice(draw.TEXTURES))
        field = draw.texture_field(rng, cv, kind, cx, cy)
        sc.add(
            m,
            family,
            draw.random_colour(rng),
            field,
            rng.uniform(0, 50),
            alpha=1.0 if rng.random() < 0.9 else rng.uniform(0.75, 0.95),
        )
    return sc


def _finish_source(sc: Scene, domain, seed, index) -> Sample:
    rng = sc.rng
    return sc.done(
        domain,
        seed,
        index,
        noise=rng.uniform(0, 12),
        blur=rng.uniform(0, 1.3),
        lighting=rng.uniform(0, 0.35),
        gamma=float(np.exp(rng.uniform(-0.3, 0.3))),
    )


# --- target domains --------------------------------------------------------------------------


def _cracks(rng, size, domain, seed, index) -> Sample:
    """Thin branching dark cracks on concrete (DeepCrack)."""
    sc = Scene(rng, size, ("crack",))
    cv = sc.cv
    grey = rng.uniform(105, 165)
    base = grey + 14 * draw.fractal_noise(rng, size, size, 6, 4)
    speck = rng.random((size, size)) < 0.02
    base = np.where(speck, base - rng.uniform(20, 50), base)
    sc.image = np.stack([base, base * rng.uniform(0.95, 1.03), base * rng.uniform(0.92, 1.0)], -1)
    for _ in range(int(rng.integers(1, 4))):
        pts_all: list[tuple[np.ndarray, float]] = []

        def walk(x, y, ang, steps, hw, depth, pts_all=pts_all):
            pts = [(x, y)]
            for _ in range(steps):
                ang += rng.normal(0, 0.35)
                x, y = x + 5 * np.cos(ang), y + 5 * np.sin(ang)
                pts.append((x, y))
                if depth < 2 and rng.random() < 0.06:
                    walk(
                        x,
                        y,
                        ang + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1),
                        int(steps * rng.uniform(0.2, 0.5)),
                        hw * 0.7,
                        depth + 1,
                    )
            pts_all.append((np.array(pts), hw))

        x0, y0 = rng.uniform(0, size, 2)
        walk(
            x0,
            y0,
            rng.uniform(0, 2 * np.pi),
            int(rng.integers(25, 60)),
            rng.uniform(1.0, 2.6),
            0,
        )
        m = np.zeros((size, size), bool)
        for pts, hw in pts_all:
            m |= draw.polyline(cv, pts, hw)
        sc.add(m, 1, np.full(3, rng.uniform(25, 60)), None)
    return sc.done(
        domain,
        seed,
        index,
        noise=rng.uniform(3, 8),
        blur=rng.uniform(0.4, 0.9),
        lighting=rng.uniform(0.05, 0.25),
    )


def _mucosa(rng, cv: Canvas, hue=(205, 105, 95)) -> np.ndarray:
    size = cv.h
    base = np.asarray(hue, F32) * rng.uniform(0.85, 1.1, 3)
    cx, cy = rng.uniform(0, size, 2)
    folds_u, _ = cv.local(cx, cy, rng.uniform(0, np.pi))
    warp = 12 * draw.smooth_noise(rng, size, size, 3)
    folds = np.sin((folds_u + warp) / rng.uniform(9, 18)) ** 8  # thin dark folds
    tex = draw.fractal_noise(rng, size, size, 4, 4)
    img = base * (1 - 0.25 * folds[..., None]) + 10 * tex[..., None]
    return img.astype(F32)


def _vignette(cv: Canvas, img: np.ndarray, strength: float) -> np.ndarray:
    r = np.sqrt((cv.xx - cv.w / 2) ** 2 + (cv.yy - cv.h / 2) ** 2) / (0.72 * cv.w)
    return img * (1 - strength * np.clip(r, 0, 1) ** 2)[..., None]


def _speculars(rng, cv: Canvas, img: np.ndarray, n: int, where: np.ndarray | None = None):
    for _ in range(n):
        if where is not None and where.any():
            ys, xs = np.nonzero(where)
            k = rng.integers(ys.size)
            cx, cy = xs[k], ys[k]
        else:
            cx, cy = rng.uniform(0, cv.w, 2)
        m = draw.ellipse(cv, cx, cy, rng.uniform(1.5, 5), rng.uniform(1, 3), rng.uniform(0, np.pi))
        img[m] = 245


def _polyps(rng, size, domain, seed, index) -> Sample:
    """Low-contrast polyps on folded mucosa (Kvasir-SEG)."""
    sc = Scene(rng, size, ("polyp",))
    cv = sc.cv
    sc.image = _mucosa(rng, cv)
    for _ in range(int(rng.integers(1, 3))):
        r = rng.uniform(20, 55)
        cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
        m = draw.blob(cv, rng, cx, cy, r)
        colour = np.array([rng.uniform(195, 235), rng.uniform(90, 125), rng.uniform(85, 115)])
        field = draw.texture_field(rng, cv, "shaded", cx - 0.3 * r, cy - 0.3 * r)
        field += 0.4 * draw.texture_field(rng, cv, "noise", cx, cy)
        sc.add(m, 1, colour, field, rng.uniform(12, 28))
    polyp = np.any([o[0] for o in sc.objects], axis=0)
    img = sc.image
    _speculars(rng, cv, img, int(rng.integers(2, 6)), polyp)
    _speculars(rng, cv, img, int(rng.integers(2, 8)))
    img = _vignette(cv, img, rng.uniform(0.3, 0.6))
    return sc.done(
        domain,
        seed,
        index,
        noise=rng.uniform(2, 6),
        blur=rng.uniform(0.6, 1.4),
        lighting=rng.uniform(0.1, 0.3),
        image=img,
    )


def _instruments(rng, size, domain, seed, index) -> Sample:
    """Elongated specular metal instruments entering from the border (Kvasir-Instrument)."""
    sc = Scene(rng, size, ("instrument",))
    cv = sc.cv
    sc.image = _mucosa(rng, cv, hue=(200, 120, 100))
    for _ in range(int(rng.integers(1, 3))):
        side = rng.uniform(0, 2 * np.pi)
        x0 = size / 2 + 0.75 * size * np.cos(side)
        y0 = size / 2 + 0.75 * size * np.sin(side)
        tx, ty = rng.uniform(0.25 * size, 0.75 * size, 2)
        hw = rng.uniform(7, 16)
        m = draw.rod(cv, x0, y0, tx, ty, hw)
        ang = np.arctan2(ty - y0, tx - x0)
        jaw_l = rng.uniform(1.2, 2.2) * hw
        jx, jy = tx + np.cos(ang) * jaw_l, ty + np.sin(ang) * jaw_l
        m |= draw.ellipse(cv, (tx + jx) / 2, (ty + jy) / 2, jaw_l / 2 + 2, hw * 0.8, ang)
        _, v = cv.local(tx, ty, ang)
        spec = np.exp(-((v / hw - rng.uniform(-0.4, 0.4)) ** 2) / 0.05)  # a specular stripe
        grey = rng.uniform(110, 175)
        field = (2 * spec - 0.5 - 0.3 * np.abs(v) / hw).astype(F32)
        sc.add(
            m, 1, np.array([grey, grey, grey * rng.uniform(1.0, 1.1)]), field, rng.uniform(35, 60)
        )
    img = _vignette(cv, sc.image, rng.uniform(0.3, 0.6))
    _speculars(rng, cv, img, int(rng.integers(3, 9)))
    return sc.done(
        domain,
        seed,
        index,
        noise=rng.uniform(2, 6),
        blur=rng.uniform(0.5, 1.2),
        lighting=rng.uniform(0.1, 0.3),
        image=img,
    )


def _xray(rng, size, domain, seed, index) -> Sample:
    """Large overlapping translucent grey structures (PaxRay); class 2: thin rib arcs."""
    sc = Scene(rng, size, ("organ", "rib"))
    cv = sc.cv
    g = rng.uniform(35, 70)
    sc.image = (
        np.full((size, size, 3), g, F32) + 6 * draw.fractal_noise(rng, size, size, 3)[..., None]
    )
    for _ in range(int(rng.integers(3, 8))):  # ribs: partial rings, translucent
        cx, cy = rng.uniform(0, size, 2)
        a = rng.uniform(50, 120)
        m = draw.ring(cv, cx, cy, a, a * rng.uniform(0.3, 0.6), rng.uniform(-0.3, 0.3), 0.08)
        m &= cv.yy < cy
        sc.add(m, 2, np.full(3, g + 45), alpha=rng.uniform(0.25, 0.4), opaque=False)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.25 * size, 0.75 * size, 2)
        r = rng.uniform(45, 85)
        m = draw.blob(cv, rng, cx, cy, r)
        m &= draw.ellipse(cv, cx, cy, r * rng.uniform(0.6, 1.0), r * 1.4, rng.uniform(0, np.pi))
        field = draw.texture_field(rng, cv, "shaded", cx, cy)
        sc.add(
            m,
            1,
            np.full(3, g + rng.uniform(60, 110)),
            field,
            20,
            alpha=rng.uniform(0.35, 0.55),
            opaque=False,
        )
    return sc.done(
        domain,
        seed,
        index,
        noise=rng.uniform(2, 5),
        blur=rng.uniform(1.2, 2.2),
        gamma=rng.uniform(0.8, 1.2),
    )


def _corrosion(rng, size, domain, seed, index) -> Sample:
    """Irregular rust-textured regions on brushed metal (Corrosion CS)."""
    sc = Scene(rng, size, ("rust",))
    cv = sc.cv
    base = np.array([rng.uniform(105, 145), rng.uniform(115, 150), rng.uniform(125, 165)], F32)
    brushed = draw.texture_field(rng, cv, "stripes", 0, 0) * 0.3 + 0.7 * draw.fractal_noise(
        rng, size, size, 16, 2
    )
    sc.image = (base + 12 * brushed[..., None]).astype(F32)
    for _ in range(int(rng.integers(2, 6))):  # scratches: thin bright distractors
        pts = rng.uniform(0, size, (2, 2))
        m = draw.polyline(cv, pts, rng.uniform(0.6, 1.4))
        sc.image[m] += 40
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = rng.uniform(0.1 * size, 0.9 * size, 2)
        r = rng.uniform(20, 60)
        region = draw.blob(cv, rng, cx, cy, r)
        region &= draw.fractal_noise(rng, size, size, 8, 3) > rng.uniform(-0.8, 0.0)
        colour = np.array([rng.uniform(140, 185), rng.uniform(70, 105), rng.uniform(35, 60)])
        sc.add(region, 1, colour, draw.texture_field(rng, cv, "noise", cx, cy), 45)
    return sc.done(
        domain,
        seed,
        index,
        noise=rng.uniform(3, 8),
        blur=rng.uniform(0.3, 1.0),
        lighting=rng.uniform(0.1, 0.4),
    )


def _nuclei(rng, size, domain, seed, index) -> Sample:
    """Dense touching nuclei in dim fluorescence (microscopy)."""
    sc = Scene(rng, size, ("nucleus",))
    cv = sc.cv
    bg = rng.uniform(8, 25)
    sc.image = (
        np.full((size, size, 3), bg, F32) + 4 * draw.fractal_noise(rng, size, size, 4)[..., None]
    )
    channel = np.array([0.35, 0.55, 1.0]) if rng.random() < 0.5 else np.array([0.3, 1.0, 0.45])
    step = rng.uniform(20, 32)
    r = step * rng.uniform(0.38, 0.52)
    for gy in np.arange(step / 2, size, step):
        for gx in np.arange(step / 2, size, step):
            if rng.random() < 0.25:
                continue
            cx, cy = gx + rng.normal(0, step * 0.18), gy + rng.normal(0, step * 0.18)
            a, b = r * rng.uniform(0.8, 1.25), r * rng.uniform(0.65, 1.0)
            th = rng.uniform(0, np.pi)
            m = cv.place(cx, cy, a, draw.ellipse, cx, cy, a, b, th)
            level = rng.uniform(45, 120)
            field = draw.texture_field(rng, cv, "shaded", cx, cy)
            sc.add(m, 1, level * channel, field, 0.25 * level)
    return sc.done(domain, seed, index, noise=rng.uniform(3, 7), blur=rng.uniform(0.8, 1.5))


def _pebbles(rng, size, domain, seed, index) -> Sample:
    """Dev domain: grey pebbles (target) and green leaves (class 2) on sand."""
    sc = Scene(rng, size, ("pebble", "leaf"))
    cv = sc.cv
    sand = np.array([rng.uniform(170, 210), rng.uniform(150, 185), rng.uniform(105, 140)], F32)
    sc.image = sand + 14 * draw.fractal_noise(rng, size, size, 16, 3)[..., None]
    for _ in range(int(rng.integers(3, 12))):
        cx, cy = rng.uniform(0, size, 2)
        if rng.random() < 0.3:
            m = draw.ellipse(
                cv, cx, cy, rng.uniform(12, 30), rng.uniform(4, 9), rng.uniform(0, np.pi)
            )
            sc.add(m, 2, np.array([rng.uniform(50, 90), rng.uniform(110, 160), 50]), None)
        else:
            m = draw.polygon(cv, rng, cx, cy, rng.uniform(10, 30))
            grey = rng.uniform(80, 150)
            sc.add(m, 1, np.full(3, grey), draw.texture_field(rng, cv, "shaded", cx, cy), 30)
    return sc.done(
        domain,
        seed,
        index,
        noise=rng.uniform(3, 8),
        blur=rng.uniform(0.3, 1.0),
        lighting=rng.uniform(0.1, 0.3),
    )


TARGET_DOMAINS: dict[str, tuple[str, str]] = {
    # name: (stand-in for, target class)
    "cracks": ("DeepCrack", "crack"),
    "polyps": ("Kvasir-SEG", "polyp"),
    "instruments": ("Kvasir-Instrument", "instrument"),
    "xray": ("PaxRay", "organ"),
    "corrosion": ("Corrosion CS", "rust"),
    "nuclei": ("fluorescence microscopy", "nucleus"),
}
DEV_DOMAIN = "pebbles"
SOURCE_DOMAIN = "source"

_RENDERERS: dict[str, Callable[..., Sample]] = {
    "cracks": _cracks,
    "polyps": _polyps,
    "instruments": _instruments,
    "xray": _xray,
    "corrosion": _corrosion,
    "nuclei": _nuclei,
    "pebbles": _pebbles,
}

DOMAINS: tuple[str, ...] = (SOURCE_DOMAIN, *TARGET_DOMAINS, DEV_DOMAIN)


def render(domain: str, seed: int = 0, index: int = 0, size: int = SIZE) -> Sample:
    """The ``index``-th image of ``domain`` under ``seed``: a pure function of the triple."""
    if domain not in DOMAINS:
        from vplab.errors import InvalidInput

        raise InvalidInput(f"unknown miniworld domain {domain!r}; expected one of {list(DOMAINS)}")
    rng = _rng(domain, seed, index)
    if domain == SOURCE_DOMAIN:
        return _finish_source(_source(rng, size), domain, seed, index)
    return _RENDERERS[domain](rng, size, domain, seed, index)


def render_many(
    domain: str, n: int, seed: int = 0, start: int = 0, size: int = SIZE
) -> list[Sample]:
    return [render(domain, seed, start + i, size) for i in range(n)]
