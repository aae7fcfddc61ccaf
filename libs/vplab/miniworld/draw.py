"""Drawing primitives of miniworld: smooth noise, blur, shapes and object appearance.

Everything is numpy float32 on a full (H, W) frame; a 256 x 256 image with 30 objects
takes a few milliseconds. Randomness only ever comes from the ``np.random.Generator``
passed in, so a scene is a pure function of its generator's seed.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

F32 = np.float32


@lru_cache(maxsize=64)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights (align corners)."""
    x = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.clip(np.floor(x).astype(np.int64), 0, max(n_in - 2, 0))
    f = (x - i0).astype(F32)
    m = np.zeros((n_out, n_in), F32)
    rows = np.arange(n_out)
    m[rows, i0] += 1.0 - f
    if n_in > 1:
        m[rows, i0 + 1] += f
    return m


@lru_cache(maxsize=32)
def _gauss_matrix(n: int, sigma10: int) -> np.ndarray:
    """(n, n) banded Gaussian blur matrix, reflecting at the borders (sigma = sigma10 / 10)."""
    sigma = sigma10 / 10.0
    r = max(1, int(3 * sigma + 0.5))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(F32)
    m = np.zeros((n, n), F32)
    for off, w in zip(range(-r, r + 1), k, strict=True):
        idx = np.arange(n) + off
        idx = np.where(idx < 0, -idx - 1, idx)
        idx = np.where(idx >= n, 2 * n - idx - 1, idx)
        np.add.at(m, (np.arange(n), np.clip(idx, 0, n - 1)), w)
    return m


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (H, W) or (H, W, C)."""
    s10 = round(sigma * 10)
    if s10 <= 0:
        return img
    gy = _gauss_matrix(img.shape[0], s10)
    gx = _gauss_matrix(img.shape[1], s10)
    if img.ndim == 2:
        return gy @ img @ gx.T
    out = np.tensordot(gy, img, axes=(1, 0))  # (H, W, C)
    return np.tensordot(out, gx, axes=(1, 1)).transpose(0, 2, 1)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Zero-mean, roughly unit-std value noise with ``cells`` features across the image."""
    low = rng.standard_normal((cells + 1, cells + 1)).astype(F32)
    return _interp_matrix(h, cells + 1) @ low @ _interp_matrix(w, cells + 1).T


def fractal_noise(
    rng: np.random.Generator, h: int, w: int, base: int = 4, octaves: int = 4, falloff: float = 0.5
) -> np.ndarray:
    out = np.zeros((h, w), F32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        out += amp * smooth_noise(rng, h, w, base * 2**o)
        total += amp
        amp *= falloff
    out /= total
    return (out - out.mean()) / (out.std() + 1e-6)


class Canvas:
    """Coordinates of one frame, shared by every shape drawn on it."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        yy, xx = np.mgrid[0:h, 0:w].astype(F32)
        self.yy, self.xx = yy, xx

    def window(self, cx: float, cy: float, radius: float) -> tuple[Canvas, tuple[slice, slice]]:
        """The sub-canvas (same absolute coordinates) of a square around (cx, cy)."""
        x0, x1 = int(max(cx - radius - 1, 0)), int(min(cx + radius + 2, self.w))
        y0, y1 = int(max(cy - radius - 1, 0)), int(min(cy + radius + 2, self.h))
        x1, y1 = max(x1, x0), max(y1, y0)
        sub = Canvas.__new__(Canvas)
        sub.h, sub.w = y1 - y0, x1 - x0
        sub.yy, sub.xx = self.yy[y0:y1, x0:x1], self.xx[y0:y1, x0:x1]
        return sub, (slice(y0, y1), slice(x0, x1))

    def place(self, cx: float, cy: float, radius: float, shape_fn, *args) -> np.ndarray:
        """Full-frame mask of ``shape_fn(sub_canvas, *args)`` computed only near (cx, cy)."""
        sub, sl = self.window(cx, cy, radius)
        out = np.zeros((self.h, self.w), bool)
        if sub.h > 0 and sub.w > 0:
            out[sl] = shape_fn(sub, *args)
        return out

    def local(self, cx: float, cy: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = self.xx - cx, self.yy - cy
        c, s = np.cos(theta), np.sin(theta)
        return dx * c + dy * s, -dx * s + dy * c


# --- shapes: each returns a (H, W) bool mask --------------------------------------------


def ellipse(cv: Canvas, cx, cy, a, b, theta) -> np.ndarray:
    u, v = cv.local(cx, cy, theta)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def ring(cv: Canvas, cx, cy, a, b, theta, thickness) -> np.ndarray:
    u, v = cv.local(cx, cy, theta)
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return (r <= 1.0) & (r >= 1.0 - thickness)


def polar_shape(cv: Canvas, cx, cy, radius_fn) -> np.ndarray:
    dx, dy = cv.xx - cx, cv.yy - cy
    return np.sqrt(dx * dx + dy * dy) <= radius_fn(np.arctan2(dy, dx))


def blob(cv: Canvas, rng: np.random.Generator, cx, cy, r) -> np.ndarray:
    ks = np.arange(2, 6)
    amps = rng.uniform(0, 0.18, size=ks.size) / np.sqrt(ks - 1)
    phases = rng.uniform(0, 2 * np.pi, size=ks.size)

    def radius(t):
        out = np.ones_like(t)
        for k, a, p in zip(ks, amps, phases, strict=True):
            out += a * np.cos(k * t + p)
        return r * out

    return polar_shape(cv, cx, cy, radius)


def star(cv: Canvas, rng: np.random.Generator, cx, cy, r) -> np.ndarray:
    n = int(rng.integers(4, 8))
    inner = rng.uniform(0.35, 0.6)
    phase = rng.uniform(0, 2 * np.pi)
    return polar_shape(
        cv, cx, cy, lambda t: r * (inner + (1 - inner) * np.abs(np.cos(n * (t + phase) / 2)) ** 1.5)
    )


def polygon(cv: Canvas, rng: np.random.Generator, cx, cy, r) -> np.ndarray:
    """A random convex polygon (3-8 vertices)."""
    n = int(rng.integers(3, 9))
    ang = np.sort(rng.uniform(0, 2 * np.pi, size=n))
    ang = np.sort(ang + np.linspace(0, 2 * np.pi, n, endpoint=False) * 0.5) % (2 * np.pi)
    ang = np.sort(ang)
    rad = r * rng.uniform(0.75, 1.0, size=n)
    px, py = cx + rad * np.cos(ang), cy + rad * np.sin(ang)
    inside = np.ones((cv.h, cv.w), bool)
    for i in range(n):
        x0, y0, x1, y1 = px[i], py[i], px[(i + 1) % n], py[(i + 1) % n]
        inside &= (x1 - x0) * (cv.yy - y0) - (y1 - y0) * (cv.xx - x0) >= 0
    if not inside.any():  # degenerate (vertices on one side): fall back to the hull's disk
        return ellipse(cv, cx, cy, r * 0.8, r * 0.8, 0.0)
    return inside


def segment_distance(cv: Canvas, x0, y0, x1, y1) -> np.ndarray:
    dx, dy = x1 - x0, y1 - y0
    ll = dx * dx + dy * dy + 1e-9
    t = np.clip(((cv.xx - x0) * dx + (cv.yy - y0) * dy) / ll, 0.0, 1.0)
    ex, ey = cv.xx - (x0 + t * dx), cv.yy - (y0 + t * dy)
    return np.sqrt(ex * ex + ey * ey)


def rod(cv: Canvas, x0, y0, x1, y1, half_width) -> np.ndarray:
    return segment_distance(cv, x0, y0, x1, y1) <= half_width


def rect(cv: Canvas, cx, cy, a, b, theta) -> np.ndarray:
    u, v = cv.local(cx, cy, theta)
    return (np.abs(u) <= a) & (np.abs(v) <= b)


def polyline(cv: Canvas, pts: np.ndarray, half_width: float) -> np.ndarray:
    """Union of capsules along a polyline (thin structures: cracks, fibres)."""
    out = np.zeros((cv.h, cv.w), bool)
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        # bounding-box window keeps a long crack cheap
        xa, xb = int(max(min(x0, x1) - half_width - 2, 0)), int(max(x0, x1) + half_width + 3)
        ya, yb = int(max(min(y0, y1) - half_width - 2, 0)), int(max(y0, y1) + half_width + 3)
        if xa >= cv.w or ya >= cv.h or xb <= 0 or yb <= 0:
            continue
        sub, sl = cv.window((xa + xb) / 2, (ya + yb) / 2, max(xb - xa, yb - ya) / 2)
        out[sl] |= segment_distance(sub, x0, y0, x1, y1) <= half_width
    return out


# --- appearance --------------------------------------------------------------------------


def random_colour(rng: np.random.Generator, lo: float = 20, hi: float = 235) -> np.ndarray:
    return rng.uniform(lo, hi, size=3).astype(F32)


def texture_field(
    rng: np.random.Generator, cv: Canvas, kind: str, cx: float, cy: float
) -> np.ndarray:
    """A (H, W) modulation in about [-1, 1] for an object's or background's texture."""
    if kind == "flat":
        return np.zeros((cv.h, cv.w), F32)
    if kind == "gradient":
        t = rng.uniform(0, 2 * np.pi)
        g = (cv.xx - cx) * np.cos(t) + (cv.yy - cy) * np.sin(t)
        return (g / (0.5 * max(cv.h, cv.w))).astype(F32)
    if kind == "stripes":
        t = rng.uniform(0, np.pi)
        period = rng.uniform(4, 16)
        return np.sin(((cv.xx * np.cos(t) + cv.yy * np.sin(t)) / period) * 2 * np.pi).astype(F32)
    if kind == "checker":
        p = rng.uniform(4, 12)
        return np.where(((cv.xx // p + cv.yy // p) % 2) == 0, 1.0, -1.0).astype(F32)
    if kind == "noise":
        return np.clip(fractal_noise(rng, cv.h, cv.w, base=int(rng.integers(8, 32))), -2, 2) / 2
    if kind == "shaded":
        r = np.sqrt((cv.xx - cx) ** 2 + (cv.yy - cy) ** 2)
        return (1.0 - 2.0 * np.clip(r / (0.15 * max(cv.h, cv.w)), 0, 1)).astype(F32)
    raise ValueError(kind)


TEXTURES = ("flat", "gradient", "stripes", "checker", "noise", "shaded")


def paint(
    image: np.ndarray,
    mask: np.ndarray,
    colour: np.ndarray,
    field: np.ndarray | None = None,
    contrast: float = 0.0,
    alpha: float = 1.0,
) -> None:
    """Paint ``colour`` (+ ``contrast`` x texture) into ``image`` where ``mask``, in place."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return
    value = np.broadcast_to(colour, (ys.size, 3)).astype(F32)
    if field is not None and contrast:
        value = (value + contrast * field[ys, xs, None]).astype(F32)
    if alpha >= 1.0:
        image[ys, xs] = value
    else:
        image[ys, xs] = (1 - alpha) * image[ys, xs] + alpha * value


def finish(
    rng: np.random.Generator,
    image: np.ndarray,
    noise: float,
    blur_sigma: float,
    lighting: float = 0.0,
    gamma: float = 1.0,
) -> np.ndarray:
    """Lighting, blur, sensor noise, gamma -> uint8."""
    h, w = image.shape[:2]
    if lighting:
        image = image * (1.0 + lighting * smooth_noise(rng, h, w, 2)[..., None])
    if blur_sigma > 0.05:
        image = blur(image, blur_sigma)
    if noise > 0:
        image = image + rng.normal(0, noise, size=image.shape).astype(F32)
    image = np.clip(image, 0, 255)
    if gamma != 1.0:
        image = 255.0 * (image / 255.0) ** gamma
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)
